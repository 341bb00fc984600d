"""Shared fixtures: the real Hydra config composed from conf/, the real digits data, and a helper
that runs `python -m src.run` in a subprocess.

Everything is CPU, offline and single-threaded (the test machines are small and shared).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import torch
from cli import subprocess_env

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
if str(REPO) not in sys.path:  # `import src` also when pytest is started from elsewhere
    sys.path.insert(0, str(REPO))

# The settings every quick run uses: conf/debug/smoke.yaml, on the CPU, without a progress bar.
TINY = ["debug=smoke", "trainer.device=cpu", "trainer.progress=false"]

torch.set_num_threads(1)


def with_tiny(overrides: Iterable[str]) -> list[str]:
    """TINY, minus the keys the caller sets itself, then the caller's overrides."""
    overrides = list(overrides)
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    return [o for o in TINY if o.split("=", 1)[0] not in given] + overrides


def compose_config(*overrides: str, tiny: bool = True, return_hydra_config: bool = False):
    """Compose conf/config.yaml (with its schemas) exactly as `python -m src.run` would."""
    from src import config

    return config.compose_config(*(with_tiny(overrides) if tiny else overrides), hydra=return_hydra_config)


@pytest.fixture
def compose() -> Callable:
    """compose(*overrides, tiny=True): the real config with the tiny test settings applied first."""
    return compose_config


@pytest.fixture(scope="session")
def digits():
    """The real digits DataBundle (sklearn's load_digits through src.data), loaded once."""
    from src.data import load_dataset

    return load_dataset(compose_config().dataset)


def cli_command(run_dir: Path, overrides: Iterable[str], tiny: bool = True) -> list[str]:
    args = with_tiny(overrides) if tiny else list(overrides)
    return [sys.executable, "-m", "src.run", *args, f"hydra.run.dir={run_dir}"]


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


def read_results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())
