"""What several test files share that is not a fixture: the repo's paths, the tiny settings every quick
run uses, composing the real config, the `python -m src.run` command line, and reading results.json.

Imported by name (`from helpers import TINY`), like tests/cli.py; the fixtures built on these are in
conftest.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from cli import REPO

CONF = REPO / "conf"

# The settings every quick run uses: conf/debug/smoke.yaml, on the CPU, without a progress bar.
TINY = ["debug=smoke", "trainer.device=cpu", "trainer.progress=false"]


def with_tiny(overrides: Iterable[str]) -> list[str]:
    """TINY, minus the keys the caller sets itself, then the caller's overrides."""
    overrides = list(overrides)
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return [o for o in TINY if o.split("=", 1)[0] not in given] + overrides


def compose_config(*overrides: str, tiny: bool = True, return_hydra_config: bool = False):
    """Compose conf/config.yaml (with its schemas) exactly as `python -m src.run` would."""
    from src import config

    return config.compose_config(*(with_tiny(overrides) if tiny else overrides), hydra=return_hydra_config)


def cli_command(run_dir: Path, overrides: Iterable[str], tiny: bool = True) -> list[str]:
    """The `python -m src.run` command line of one run into run_dir."""
    args = with_tiny(overrides) if tiny else list(overrides)
    return [sys.executable, "-m", "src.run", *args, f"hydra.run.dir={run_dir}"]


def make_finished_run(run_dir: Path, overrides: Iterable[str], cwd: Path, env: dict) -> Path:
    """Run `python -m src.run` into run_dir with the tiny settings and the overrides; fail the caller's
    test with the run's stderr unless it finishes."""
    command = cli_command(run_dir, overrides)
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def read_results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def wait_for_epochs(run_dir: Path, proc: subprocess.Popen, n: int, timeout: float = 240) -> None:
    """Wait until the run proc trains into run_dir has a checkpoint and n epochs in metrics.csv (to kill it
    there); fail the caller's test if proc ends first or nothing comes in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed: {err}")
        try:
            rows = (run_dir / "metrics.csv").read_text().count("\n") - 1
        except FileNotFoundError:
            rows = 0
        if (run_dir / "checkpoints" / "last.pt").exists() and rows >= n:
            return
        time.sleep(0.02)
    pytest.fail("no checkpoint appeared in time")
