"""Pruning inside Hydra sweeps: a job that runs an Optuna trial reports an interim validation NLL to its
trial every `eval.interim_every` epochs and asks the study's pruner whether to stop.

The interim value (src.evaluate.interim_nll) is the importance-sampled NLL with `eval.interim_is_samples`
samples on the first `eval.interim_points` validation points, with the same noise for every trial: an
estimate of the trial's objective (val_nll: S = eval.is_samples on all validation points) on the same
scale whatever λ, β, K, warm-up or constraint the trial has. The training or validation *loss* would not
do: its regulariser weight is itself what the search varies.

The pruner is the `pruner` config group (conf/pruner/), instantiated in the job with the study it
reports to. A job outside an Optuna trial reports nothing. A storage error while reporting never stops
training: one warning, and the job goes on unpruned.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

PRUNER_TARGETS = ("optuna.pruners.*",)
NO_PRUNER = "optuna.pruners.NopPruner"


def make_pruner(cfg: Any):
    """The Optuna pruner the config's `pruner` group names (NopPruner when none is selected)."""
    import optuna
    from hydra.utils import instantiate

    node = OmegaConf.select(cfg, "pruner", default=None)
    if node is None:
        return optuna.pruners.NopPruner()
    return instantiate(node, _execution_whitelist_=PRUNER_TARGETS)


def prunes(cfg: Any) -> bool:
    """Whether the config selects a pruner that can stop trials."""
    target = OmegaConf.select(cfg, "pruner._target_", default=None)
    return target is not None and target != NO_PRUNER


class TrialReporter:
    """Reports interim values to one trial and asks the pruner (for the job running that trial)."""

    def __init__(self, trial, every: int, storage: str):
        self.trial, self.every, self.storage = trial, every, storage
        self.working = True

    @classmethod
    def for_job(cls, cfg: Any, hydra_cfg: Any, record: dict) -> TrialReporter | None:
        """The reporter of a job that runs an Optuna trial (its record from src.sweeps.jobs.job_record),
        None for any other job, or when the study cannot be reached (with one warning)."""
        storage = OmegaConf.select(hydra_cfg, "sweeper.storage", default=None)
        every = OmegaConf.select(cfg, "eval.interim_every", default=0)
        if record.get("trial_id") is None or not record.get("study") or storage is None or not every:
            return None
        import optuna

        from src.sweeps.storage import StudyStorageError, load_existing_study, storage_error, storage_errors

        try:
            study = load_existing_study(str(storage), record["study"], pruner=make_pruner(cfg))
            if len(study.directions) > 1:  # Optuna keeps no interim values for multi-objective trials
                return None
            trial = optuna.trial.Trial(study, record["trial_id"])
        except StudyStorageError as e:
            log.warning("pruning off for this job: %s", e)
            return None
        except storage_errors() as e:
            log.warning("pruning off for this job: %s", storage_error(storage, e))
            return None
        return cls(trial, int(every), str(storage))

    def due(self, epoch: int) -> bool:
        return self.working and epoch % self.every == 0

    def report(self, epoch: int, value: float) -> bool:
        """Report value at step epoch; True when the pruner says to stop."""
        from src.sweeps.storage import storage_error, storage_errors

        try:
            self.trial.report(value, epoch)
            return self.trial.should_prune()
        except storage_errors() as e:
            self.working = False
            log.warning("pruning off for the rest of this job: %s", storage_error(self.storage, e))
            return False
