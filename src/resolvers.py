"""The conf/ directory, the OmegaConf resolvers its files use, and `register_resolvers()`.

A leaf (the standard library and omegaconf only): src.config and src.sweeps.jobs both read it. Every
entry point that composes or resolves a config calls `register_resolvers()` first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def option_names(group: str) -> list[str]:
    """The options of a config group: its files in conf/<group>/."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def config_groups() -> str:
    """'group: option, option' per line for every group a command line selects from (--help)."""
    groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
    return "\n".join(f"{g}: {', '.join(option_names(g))}" for g in groups)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def workers(n_jobs: Any) -> int:
    """joblib's reading of n_jobs: -1 = all CPUs, -2 = all but one, None/0 = 1."""
    try:
        n = int(n_jobs)
    except (TypeError, ValueError):
        return 1
    if n < 0:
        return max(1, cpu_count() + 1 + n)
    return max(1, n)


def parallel_trials(n_jobs: Any = 1) -> int:
    """Resolver for hydra.sweeper.n_jobs: as many trials per batch as the launcher runs at once.

    `${parallel_trials:${oc.select:hydra.launcher.n_jobs,1}}` gives 1 for the basic and submitit
    launchers and the joblib worker count (-1 read as all CPUs) for joblib. The Optuna sweeper asks
    n_jobs trials, launches them as one batch and waits for all of them, so with n_jobs=1 a parallel
    launcher would run one trial at a time.
    """
    return workers(n_jobs)


def _max(*values: int) -> int:
    return max(values)


RESOLVERS = {
    "config_groups": config_groups,  # conf/hydra/help/csrae.yaml: the --help listing
    "parallel_trials": parallel_trials,  # conf/optuna_study.yaml: hydra.sweeper.n_jobs
    "max": _max,  # conf/pruner/: the first rung is the end of the warm-up, at least 1
}


def register_resolvers() -> None:
    """Register RESOLVERS with OmegaConf; a name already registered is left as it is (OmegaConf
    refuses a second registration)."""
    for name, resolver in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_resolver(name, resolver)
