"""Shared fixtures: the real Hydra config composed from conf/, the real digits data, and a helper
that runs `python -m src.run` in a subprocess.

Everything is CPU, offline and single-threaded (the test machines are small and shared).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cli import subprocess_env
from helpers import REPO, cli_command, compose_config, make_finished_run

if str(REPO) not in sys.path:  # `import src` also when pytest is started from elsewhere
    sys.path.insert(0, str(REPO))

torch.set_num_threads(1)


@pytest.fixture
def compose() -> Callable:
    """compose(*overrides, tiny=True): the real config with the tiny test settings applied first."""
    return compose_config


@pytest.fixture(scope="session")
def digits():
    """The real digits DataBundle (sklearn's load_digits through src.data), loaded once."""
    from src.data import load_dataset

    return load_dataset(compose_config().dataset)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, cli_env) -> Path:
    """A finished one-epoch run (csrae + gmm K=3 on digits, the TINY settings: clustering and few-label
    accuracies on), made once by `python -m src.run`. Shared: copy it before changing anything in it."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    return make_finished_run(run_dir, ["prior.K=3"], cwd=tmp_path_factory.mktemp("cwd"), env=cli_env)


@pytest.fixture(scope="session")
def cli_env() -> dict:
    return subprocess_env()


@pytest.fixture
def run_cli(tmp_path, cli_env) -> Callable:
    """run_cli(run_dir, *overrides, tiny=True, timeout=300) -> CompletedProcess.

    Runs `python -m src.run` from an empty working directory (tmp_path/cwd) so that anything
    written outside the run dir shows up there.
    """
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)

    def run(run_dir: Path, *overrides: str, tiny: bool = True, timeout: float = 300):
        return subprocess.run(
            cli_command(run_dir, overrides, tiny), cwd=cwd, env=cli_env, capture_output=True, text=True, timeout=timeout
        )

    run.cwd = cwd
    return run
