"""SIGTERM stops a run like Ctrl-C, also when the signal lands while Python runs a finalizer (SQLAlchemy
and torch run weakref callbacks during garbage collection), where a KeyboardInterrupt is lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A finalizer that receives SIGTERM; the main flow must then stop with KeyboardInterrupt.
SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from src import interrupts

    interrupts.install()

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.{sig})

    try:
        Finalized()
        for _ in range(10_000_000):
            pass
    except KeyboardInterrupt:
        print("stopped")
        sys.exit(130)
    print("went on")
    """
)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_that_lands_in_a_finalizer_still_stops(sig):
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(sig=sig)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert (p.returncode, p.stdout.strip()) == (130, "stopped"), p.stdout + p.stderr
    assert "Exception ignored" not in p.stderr


def test_a_process_started_to_ignore_ctrl_c_keeps_ignoring_it():
    script = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n" + SCRIPT.format(sig="SIGINT")
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout.strip()) == (0, "went on"), p.stdout + p.stderr


def test_other_lost_exceptions_still_reach_the_hook_that_was_there():
    """Only a lost interrupt is taken over; any other exception in a finalizer goes where it went before
    (pytest, for one, installs its own hook to report them)."""
    script = textwrap.dedent(
        """
        import sys
        from src import interrupts

        seen = []
        sys.unraisablehook = lambda u: seen.append(u.exc_type.__name__)
        interrupts.install()

        class Finalized:
            def __del__(self):
                raise ValueError("in a finalizer")

        Finalized()
        print(seen)
        """
    )
    p = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "['ValueError']", p.stdout + p.stderr
