"""The environment every test subprocess (`python -m src.run`, `python -m src.report`, notebooks) gets.

One thread per process (the test machines are small and shared), the repo importable without
installing, a headless matplotlib, and Hydra's one-line errors (no HYDRA_FULL_ERROR).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict:
    # REPO/tests too: some sweep tests hand Hydra a hook defined in a test module (tests.test_sweeps),
    # which imports this module as `cli`.
    path = os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    env = dict(
        os.environ,
        PYTHONPATH=path,
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
    )
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(extra)
    return env
