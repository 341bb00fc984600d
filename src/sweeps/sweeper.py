"""The Optuna sweep loop (hydra/sweeper=csrae_optuna, hydra_plugins/csrae_sweeps/): ask the study for
trials, launch them as Hydra jobs, tell the study how each ended.

What it adds to the Optuna plugin's loop:
- checks that would fail every trial alike run once, before the study is touched (`preflight`);
- each trial is linked to its job dir (src.sweeps.trials.record_trial), and its job reports interim
  values to the trial and stops when the study's pruner says so (src.sweeps.pruning): such a job
  returns a PrunedJob and its trial ends PRUNED;
- `budget: study` shares n_trials between several worker processes on one study;
- SIGTERM or Ctrl-C: this process's running trials are recorded FAIL (interrupted=true), trials.csv
  is written, exit 130 with one line; so too when `scancel` cancels every SLURM job of a batch
  (src.sweeps.slurm);
- every trial of this invocation failed: one line quoting each job's error, exit 2;
- trials.csv (beside optimization_results.yaml) at the end, whatever happened.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src import interrupts
from src.errors import UserError, first_line, print_error
from src.sweeps import slurm
from src.sweeps.jobs import TRIALS_SUBDIR, PrunedJob, check_objectives, objective_names
from src.sweeps.space import search_space
from src.sweeps.storage import (
    STORAGE_WAITS,
    StudyStorageError,
    directions_of,
    ensure_study,
    export_trials,
    masked,
    retrying,
    storage_errors,
    study_summary,
)
from src.sweeps.trials import fail_interrupted, record_trial, trials_from_jobs

log = logging.getLogger(__name__)

TRIALS_CSV = "trials.csv"  # written beside optimization_results.yaml
BUDGETS = ("invocation", "study")
SAMPLER_TARGETS = ("optuna.samplers.*", "hydra_plugins.hydra_optuna_sweeper.*")


# --- once per sweep, before any trial -----------------------------------------------------------


class SweepDirInUse(RuntimeError):
    """Another Optuna sweep already writes job directories into this hydra.sweep.dir."""


def claim_sweep_dir(sweep_dir: Any) -> Path:
    """Atomically claim <sweep dir>/.optuna for this process, or raise SweepDirInUse.

    Job directories are numbered 0, 1, ... in every process, so two processes sharing a sweep dir
    (two workers started in the same second, or a rerun with the same hydra.sweep.dir) would
    overwrite each other's finished job directories. os.mkdir is atomic: exactly one process wins.
    """
    root = Path(str(sweep_dir))
    root.mkdir(parents=True, exist_ok=True)
    marker = root / TRIALS_SUBDIR
    try:
        marker.mkdir()
    except FileExistsError:
        raise SweepDirInUse(
            f"{root} already holds an Optuna sweep's jobs (another process started in the same second, or "
            f"hydra.sweep.dir was reused); its job dirs would be overwritten. Pass a fresh "
            f"hydra.sweep.dir=..., e.g. hydra.sweep.dir=outputs/multirun/$(date +%F)/worker-$HOSTNAME-$$"
        ) from None
    (marker / "owner.json").write_text(
        json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    )
    return marker


def preflight(config: DictConfig, settings: dict) -> None:
    """Checks that would fail every trial alike (bad fixed override, missing dataset, unknown or test-set
    objective, n_trials < 1, a pruner on a multi-objective study): fail once, before the study is touched."""
    from src.config import ConfigError, validate
    from src.contract import RESULT_KEYS
    from src.data import check_available
    from src.sweeps.pruning import prunes

    n_trials = settings.get("n_trials")
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ConfigError(f"hydra.sweeper.n_trials={n_trials}: the number of trials to run must be at least 1")
    if settings.get("budget") not in BUDGETS:
        raise ConfigError(f"hydra.sweeper.budget={settings.get('budget')}: choose one of {', '.join(BUDGETS)}")
    if len(directions_of(settings.get("direction"))) > 1 and prunes(config):
        raise ConfigError(
            f"pruner={OmegaConf.select(config, 'hydra.runtime.choices.pruner')}: Optuna cannot prune a "
            "multi-objective study; use pruner=none"
        )
    check_objectives(config, RESULT_KEYS)
    validate(config)
    check_available(config.dataset)


def make_sampler(sampler_cfg: Any):
    import functools

    import optuna
    from hydra.utils import instantiate

    from src.config import ConfigError

    sampler = instantiate(sampler_cfg, _execution_whitelist_=SAMPLER_TARGETS)
    if isinstance(sampler, functools.partial) and sampler.func is optuna.samplers.GridSampler:
        raise ConfigError("the grid sampler is not needed for a grid: run a grid multirun (-m key=a,b,c)")
    return sampler


# --- the loop -----------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = first_line(e, "")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Sweep:
    """One invocation's trials on the study."""

    def __init__(self, config: DictConfig, settings: dict, launcher: Any, study, sweep_dir: Path):
        self.config, self.settings, self.launcher, self.study = config, settings, launcher, study
        self.sweep_dir = sweep_dir
        self.directions = directions_of(settings["direction"])
        self.mine: list[int] = []  # trial numbers this invocation asked for
        self.running: list = []  # of those, the trials launched and not yet told
        self.errors: dict[int, str] = {}  # trial number -> first line of its job's error
        self.storage = settings["storage"]
        self.job_idx = 0
        self.extend = _search_space_hook(settings.get("custom_search_space"))

    def _active(self, below: int | None = None) -> int:
        """Trials that count against a study budget: finished (COMPLETE, PRUNED) or under way."""
        from optuna.trial import TrialState

        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        trials = retrying(self.storage, self.study.get_trials, deepcopy=False, states=states)
        return sum(1 for t in trials if below is None or t.number < below)

    def _ask(self, space: dict):
        """A new trial, or None when a study budget is spent (a trial asked at the same moment as another
        worker's last one is recorded FAIL with over_budget=true, so the study never exceeds it)."""
        from optuna.trial import TrialState

        n_trials = self.settings["n_trials"]
        if self.settings["budget"] == "study" and self._active() >= n_trials:
            return None
        trial = retrying(self.storage, self.study.ask, space)
        if self.settings["budget"] == "study" and self._active(below=trial.number) >= n_trials:
            retrying(self.storage, trial.set_user_attr, "over_budget", True)
            self._record(trial, state=TrialState.FAIL)
            return None
        record_trial(self.config, trial)
        if self.extend is not None:
            self.extend(self.config, trial)
        self.mine.append(trial.number)
        return trial

    def run(self, space: dict, fixed: dict, fixed_overrides: list[str]) -> None:
        n_jobs = max(1, int(self.settings.get("n_jobs") or 1))
        to_go = self.settings["n_trials"]
        while to_go > 0:
            trials = []
            for _ in range(min(n_jobs, to_go)):
                trial = self._ask(space)
                if trial is None:
                    break
                trials.append(trial)
            if not trials:
                log.info("study budget of %d trials reached", self.settings["n_trials"])
                break
            overrides = [
                tuple(f"{k}={v}" for k, v in {**t.params, **fixed}.items()) + tuple(fixed_overrides) for t in trials
            ]
            self.running = trials
            try:
                returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            except Exception as e:
                array = slurm.lost_array(self.config, e)
                if array is None:
                    raise
                returns = slurm.batch_results(self.config, array, len(trials))  # a job ended without a result
            self.job_idx += len(returns)
            failed = sum(self._tell(t, ret) == "FAIL" for t, ret in zip(trials, returns))
            self.running = []
            cancelled = slurm.cancelled_batch(self.config, returns)
            if cancelled:
                raise slurm.BatchCancelled(cancelled, [t.number for t in trials])
            to_go -= len(trials)
            if failed / len(trials) > float(self.settings["max_failure_rate"]):
                raise SweepFailed(
                    f"{failed} of {len(trials)} trials failed, above hydra.sweeper.max_failure_rate="
                    f"{self.settings['max_failure_rate']}; " + self._error_summary()
                )

    def _tell(self, trial, ret) -> str:
        """Tell the study how the trial's job ended; returns the trial's final state name."""
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        if ret.status != JobStatus.COMPLETED:
            error = ret._return_value  # the job's exception (JobReturn.return_value would raise it)
            text = _first_line(error) if isinstance(error, BaseException) else str(error)
            # A job's own dir in its error would keep trials that failed alike apart in the summary.
            job_dir = OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir") if ret.hydra_cfg else None
            self.errors[trial.number] = text.replace(str(job_dir), "<job dir>") if job_dir else text
            if isinstance(error, KeyboardInterrupt) or "interrupted" in self.errors[trial.number]:
                retrying(self.storage, trial.set_user_attr, "interrupted", True)
            self._record(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, self.errors[trial.number])
            return "FAIL"
        value = ret.return_value
        if isinstance(value, PrunedJob):
            self._record(trial, state=TrialState.PRUNED)
            log.info("trial %d pruned after epoch %d (interim val NLL %.3f)", trial.number, value.epoch, value.value)
            return "PRUNED"
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            values = []
        if len(values) != len(self.directions) or not all(math.isfinite(v) for v in values):
            self.errors[trial.number] = f"the job returned {value!r}, not {len(self.directions)} finite number(s)"
            self._record(trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, self.errors[trial.number])
            return "FAIL"
        self._record(trial, values=values)
        return "COMPLETE"

    def _record(self, trial, **outcome) -> None:
        """study.tell, retried while the storage fails (told twice is told once: skip_if_finished)."""
        retrying(self.storage, self.study.tell, trial, skip_if_finished=True, **outcome)

    def _error_summary(self) -> str:
        by_error: dict[str, list[int]] = {}
        for number, error in sorted(self.errors.items()):
            by_error.setdefault(error, []).append(number)
        parts = [f"trial{'s' if len(n) > 1 else ''} {', '.join(map(str, n))}: {e}" for e, n in by_error.items()]
        return "; ".join(parts) + f"; each job's run.log and results.json are in {self.sweep_dir}/<job num>/"

    def all_failed(self) -> bool:
        return bool(self.mine) and len(self.errors) == len(self.mine)

    def write_best(self) -> None:
        """optimization_results.yaml, as the Optuna plugin writes it (when the study has a finished trial)."""
        from optuna.trial import TrialState

        if not retrying(self.storage, self.study.get_trials, deepcopy=False, states=(TrialState.COMPLETE,)):
            return
        if len(self.directions) == 1:
            best = retrying(self.storage, lambda: self.study.best_trial)
            out = {"name": "optuna", "best_params": best.params, "best_value": best.value}
            log.info("best trial %d: value %s, params %s", best.number, best.value, best.params)
        else:
            front = [
                {"params": t.params, "values": t.values} for t in retrying(self.storage, lambda: self.study.best_trials)
            ]
            out = {"name": "optuna", "solutions": front}
            log.info("Pareto front: %d trials", len(front))
        OmegaConf.save(OmegaConf.create(out), self.sweep_dir / "optimization_results.yaml")


def _search_space_hook(target: str | None):
    """hydra.sweeper.custom_search_space: a function (config, trial) called for each new trial after it
    is linked to its job, e.g. to suggest parameters that depend on others (the Optuna plugin's hook).
    The sweep file names it, so it is trusted as the sweeper class is."""
    if not target:
        return None
    from hydra.utils import instantiate

    return instantiate({"_target_": target, "_partial_": True}, _execution_whitelist_=(str(target),))


class SweepFailed(RuntimeError):
    """Too many trials failed (one line for the user)."""


def write_trials_csv(storage: str, name: str, sweep_dir: Path, objectives: list[str]) -> None:
    """<sweep dir>/trials.csv from the study, or from the job dirs when the study cannot be read."""
    out = sweep_dir / TRIALS_CSV
    try:
        log.info("trials of study %s written to %s", name, export_trials(storage, name, out, objectives))
    except (StudyStorageError, *storage_errors()) as e:
        log.warning("trials.csv written from the job dirs alone (the study cannot be read: %s)", e)
        trials_from_jobs(sweep_dir, out, objectives)


def _stopped(what: str, recorded: str, sweep_dir: Path, name: str) -> str:
    return (
        f"interrupted: {what}; {recorded}, {sweep_dir / TRIALS_CSV} written; rerun the command "
        f"(new hydra.sweep.dir) to add trials to study {name}"
    )


def run_sweep(config: DictConfig, settings: dict, launcher: Any, arguments: list[str]) -> None:
    import optuna

    from src.sweeps.pruning import make_pruner

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep says once what it opened (below)
    storage, name = str(settings["storage"]), str(settings["study_name"])
    sweep_dir = Path(str(config.hydra.sweep.dir))
    objectives = objective_names(config) or ["val_nll"]
    try:
        preflight(config, settings)
        space, fixed, fixed_overrides = search_space(settings.get("params"), arguments)
        study = ensure_study(
            storage,
            name,
            directions_of(settings["direction"]),
            objectives,
            sampler=make_sampler(settings["sampler"]),
            pruner=make_pruner(config),
        )
        claim_sweep_dir(sweep_dir)
    except (UserError, SweepDirInUse, StudyStorageError, ValueError) as e:
        raise SystemExit(print_error(e)) from None
    log.info("%s in %s", study_summary(study), masked(storage))
    running = [t.number for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
    if running:
        log.warning(
            "trials %s are RUNNING: other processes are working on this study, or an earlier sweep "
            "was killed. If no other process is, `python -m src.sweeps close-stale sweep=%s "
            "hydra.sweeper.storage=...` closes them (COMPLETE from their results.json, else FAIL).",
            running,
            OmegaConf.select(config, "hydra.runtime.choices.sweep", default="NAME"),
        )
    sweep = Sweep(config, settings, launcher, study, sweep_dir)
    # What the bookkeeping after a stop needs is imported now: a stop that lands inside an import leaves
    # the module half-made, and importing it again then fails.
    import pandas  # noqa: F401  (trials.csv)

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    interrupts.install()
    code, message = 0, None
    try:
        sweep.run(space, fixed, fixed_overrides)
        sweep.write_best()
        if sweep.all_failed():
            code = 2
            message = f"error: all {len(sweep.mine)} trials of this sweep failed (study {name}); " + (
                sweep._error_summary()
            )
    except KeyboardInterrupt:
        # A second Ctrl-C or SIGTERM must not cut the bookkeeping short (a traceback, a RUNNING trial).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = 130
        try:
            recorded = f"trial(s) {fail_interrupted(study, sweep.running, storage)} recorded FAIL (interrupted)"
        except StudyStorageError as e:
            recorded = f"trial(s) {[t.number for t in sweep.running]} not recorded ({e})"
        message = _stopped("sweep stopped", recorded, sweep_dir, name)
    except slurm.BatchCancelled as e:  # scancel of the whole batch: the user stopped the sweep
        recorded = f"trial(s) {e.trials} recorded FAIL (interrupted)"
        code, message = 130, _stopped(f"sweep stopped, {e}", recorded, sweep_dir, name)
    except SweepFailed as e:
        code, message = 2, f"error: {e}"
    except StudyStorageError as e:
        code = 2
        message = (
            f"error: {e}; the sweep stopped after trying for {sum(STORAGE_WAITS)} s. {sweep_dir / TRIALS_CSV} "
            f"holds what its jobs recorded; once the storage works again, `python -m src.sweeps close-stale "
            f"sweep={OmegaConf.select(config, 'hydra.runtime.choices.sweep', default='NAME')} "
            "hydra.sweeper.storage=...` records the trials it left RUNNING"
        )
    finally:
        write_trials_csv(storage, name, sweep_dir, objectives)
        if code != 130:  # a stopped sweep exits next, still deaf to further stops
            interrupts.restore(previous)
    if message:
        print(message, file=sys.stderr)
    if code:
        raise SystemExit(code)
