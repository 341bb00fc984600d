"""Real servers for the scaling-out tests: a SLURM cluster and a PostgreSQL server.

CI starts them (.ci/slurm.sh, .ci/postgres.sh, called by .ci/run) and sets CI=true: a server that
cannot be reached there is a failure. Elsewhere the tests that need one skip, saying how to start it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(what: str, why: str, how: str) -> None:
    """Fail in CI, skip elsewhere, with one clear line."""
    message = f"{what} not reachable ({why}); start it with {how}"
    if in_ci():
        pytest.fail(f"{message}: CI must run these tests on a real server")
    pytest.skip(message)


def slurm_problem() -> str | None:
    """None when `sinfo` reaches a controller with a usable node, else why not."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no sinfo/sbatch on PATH"
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if p.returncode != 0:
        return (p.stderr.strip().splitlines() or [f"sinfo exited {p.returncode}"])[-1]
    states = p.stdout.split()
    if not any(s.rstrip("*") in ("idle", "mix", "alloc") for s in states):
        return f"no usable node (states: {states or 'none'})"
    return None


def postgres_url() -> str | None:
    return os.environ.get("CSRAE_TEST_PG_URL") or None
