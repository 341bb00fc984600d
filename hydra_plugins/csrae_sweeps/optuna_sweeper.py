"""The Optuna sweeper Hydra instantiates for this project's Optuna sweeps (conf/optuna_study.yaml).

Its settings are the Optuna plugin's (sampler, direction, storage, study_name, n_trials, n_jobs,
max_failure_rate, params) plus `budget`. Light on purpose: Hydra imports every plugin module at start-up,
so Optuna and the sweep loop (src.sweeps.sweeper) are imported only when a sweep starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
from omegaconf import DictConfig


@dataclass
class CsraeOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "hydra_plugins.csrae_sweeps.optuna_sweeper.CsraeOptunaSweeper"
    # A failed trial is recorded FAIL and the sweep goes on (docs/SWEEPS.md).
    max_failure_rate: float = 1.0
    # invocation: n_trials more trials per command; study: the study as a whole holds n_trials
    # (finished or running), so several worker processes share one budget.
    budget: str = "invocation"
    # A directory: each trial's images become Optuna artifacts there (optuna-dashboard shows them on the
    # trial's page). None: off (the artifacts copy every image).
    artifact_dir: str | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="csrae_optuna", node=CsraeOptunaSweeperConf, provider="csrae_sweeps"
)


class CsraeOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        from src.sweeps.sweeper import run_sweep

        run_sweep(self.config, self.settings, self.launcher, arguments)
