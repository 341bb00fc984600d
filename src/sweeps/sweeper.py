"""What the Optuna sweep files hand to Hydra: the sweeper (hydra.sweeper._target_) and the study
callback (hydra.callbacks.optuna_study), with the checks that run once before any trial.

Hydra accepts a sweeper class only from the hydra_plugins package, and finds it in its plugin
registry: register_sweeper() puts OptunaSweeper there under SWEEPER_TARGET. OptunaStudyCallback
calls it, because Hydra builds the callbacks before it looks the sweeper up.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _PluginOptunaSweeper
from omegaconf import DictConfig, OmegaConf

from src.sweeps.jobs import TRIALS_SUBDIR, check_objectives
from src.sweeps.storage import (
    StudyStorageError,
    ensure_study,
    export_trials,
    load_existing_study,
    masked,
    scrub,
    storage_errors,
    study_summary,
    sweeper_settings,
)
from src.sweeps.trials import fail_interrupted, this_process

log = logging.getLogger(__name__)

SWEEPER_TARGET = "hydra_plugins.csrae_sweeps.OptunaSweeper"  # the Optuna sweep files' hydra.sweeper._target_
TRIALS_CSV = "trials.csv"  # written beside optimization_results.yaml


# --- once per sweep, before any trial -----------------------------------------------------------


class SweepDirInUse(RuntimeError):
    """Another Optuna sweep already writes job directories into this hydra.sweep.dir."""


def claim_sweep_dir(sweep_dir: Any) -> Path:
    """Atomically claim <sweep dir>/.optuna for this process, or raise SweepDirInUse.

    The Optuna sweeper numbers its jobs 0, 1, ... in every process, so two processes sharing a sweep
    dir (two workers started in the same second, or a rerun with the same hydra.sweep.dir) would
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


def preflight(config: DictConfig) -> None:
    """Checks that would fail every trial alike (bad fixed override, missing dataset, unknown objective,
    n_trials < 1):
    fail once, before the study is touched, instead of recording n_trials failed trials."""
    from src.config import ConfigError, validate
    from src.contract import RESULT_KEYS
    from src.data import check_available

    n_trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)
    if n_trials is not None and (not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1):
        raise ConfigError(f"hydra.sweeper.n_trials={n_trials}: the number of trials to run must be at least 1")
    check_objectives(config, RESULT_KEYS)
    validate(config)
    check_available(config.dataset)


class OptunaStudyCallback(Callback):
    """Hydra callback for Optuna sweeps (hydra.callbacks.optuna_study in conf/optuna_study.yaml).

    on_multirun_start: check the fixed part of the config, claim the sweep dir, create the storage
    directory and the study (with the sweep's directions) before the sweeper opens it.
    on_multirun_end: write <sweep dir>/trials.csv beside optimization_results.yaml.
    """

    def __init__(self) -> None:
        # Hydra builds hydra.callbacks before it instantiates hydra.sweeper (Hydra.multirun), and looks a
        # sweeper up in its plugin registry without importing its _target_: register it here.
        register_sweeper()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        settings = sweeper_settings(config)
        if settings is None:
            return
        storage, name, directions, _ = settings
        from src.pipeline import USER_ERRORS

        try:
            preflight(config)
            study = ensure_study(storage, name, directions)
            claim_sweep_dir(config.hydra.sweep.dir)
        except (*USER_ERRORS, SweepDirInUse, StudyStorageError) as e:
            # Hydra turns a callback's Exception into a warning and carries on; SystemExit stops the sweep.
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
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

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        settings = sweeper_settings(config)
        if settings is None:
            return
        storage, name, _, objectives = settings
        out = export_trials(storage, name, Path(str(config.hydra.sweep.dir)) / TRIALS_CSV, objectives)
        log.info("trials of study %s written to %s", name, out)


# --- the sweeper --------------------------------------------------------------------------------


class _MaskStorage(logging.Filter):
    """Masks the storage URL in the plugin's own log line ("Storage: URL")."""

    def __init__(self, storage: str):
        super().__init__()
        self.storage = storage

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if self.storage in msg:
            record.msg, record.args = scrub(msg, self.storage), ()
        return True


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _job_error(job_dir: Path) -> str | None:
    """Why a job failed: results.json's error, else the last ERROR line of its run.log (an objective
    the finished run cannot give is logged there)."""
    try:
        error = json.loads((job_dir / "results.json").read_text()).get("error")
        if error:
            return str(error)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        lines = [ln for ln in (job_dir / "run.log").read_text().splitlines() if "[ERROR]" in ln]
    except OSError:
        return None
    return lines[-1].split("[ERROR] - ", 1)[-1].strip() if lines else None


class OptunaSweeper(_PluginOptunaSweeper):
    """hydra-optuna-sweeper's sweeper, safe to stop:

    - SIGTERM or SIGINT (Ctrl-C): the trials this process was running are recorded FAIL with user
      attr interrupted=true (not left RUNNING), trials.csv is written, and the command exits 130 with
      one line.
    - every trial of this invocation failed: trials.csv is written and the command exits 2 with one
      line naming the first error and where the logs are (the plugin would stop on
      "Record does not exist" when the study has no completed trial).
    - the plugin's "Storage: URL" log line is masked like every other line of this code.
    """

    __module__ = SWEEPER_TARGET.rsplit(".", 1)[0]  # the name Hydra knows it by (register_sweeper)

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self._config = config
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        import signal

        settings = sweeper_settings(self._config)
        sweep_dir = str(self._config.hydra.sweep.dir)
        plugin_log = logging.getLogger("hydra_plugins.hydra_optuna_sweeper._impl")
        mask = _MaskStorage(settings[0]) if settings else None
        if mask:
            plugin_log.addFilter(mask)
        try:
            previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        except ValueError:  # not the main thread
            previous = None
        try:
            super().sweep(arguments)
        except KeyboardInterrupt:
            # A second Ctrl-C or SIGTERM must not cut the bookkeeping short (a traceback, a RUNNING trial).
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            raise SystemExit(self._stopped(settings, sweep_dir)) from None
        except Exception:
            if settings and self._all_failed(settings, sweep_dir):
                raise SystemExit(2) from None
            raise
        else:
            if settings and self._all_failed(settings, sweep_dir):
                raise SystemExit(2)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if mask:
                plugin_log.removeFilter(mask)

    def _mine(self, study, sweep_dir: str) -> list:
        return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("sweep_dir") == sweep_dir]

    def _stopped(self, settings, sweep_dir: str) -> int:
        storage, name, _, objectives = settings
        me = this_process()
        try:
            study = load_existing_study(storage, name)
            running = [
                t.number
                for t in self._mine(study, sweep_dir)
                if t.state.name == "RUNNING" and t.user_attrs.get("pid") == me["pid"]
            ]
            failed = fail_interrupted(study, running)
            out = export_trials(storage, name, Path(sweep_dir) / TRIALS_CSV, objectives)
            done = f"trial(s) {failed} recorded FAIL (interrupted), {out} written"
        except (StudyStorageError, *storage_errors()) as e:
            done = f"the study could not be updated ({scrub(e, storage)})"
        print(
            f"interrupted: sweep stopped; {done}; rerun the command (new hydra.sweep.dir) to add trials to "
            f"study {name}",
            file=sys.stderr,
        )
        return 130

    def _all_failed(self, settings, sweep_dir: str) -> bool:
        """True (after saying so in one line and writing trials.csv) when every trial of this
        invocation failed."""
        storage, name, _, objectives = settings
        try:
            study = load_existing_study(storage, name)
            mine = self._mine(study, sweep_dir)
        except (StudyStorageError, *storage_errors()):
            return False
        if not mine or any(t.state.name == "COMPLETE" for t in mine):
            return False
        first = min(mine, key=lambda t: t.number)
        error = _job_error(Path(sweep_dir) / str(first.user_attrs.get("job_num")))
        try:
            export_trials(storage, name, Path(sweep_dir) / TRIALS_CSV, objectives)
        except (StudyStorageError, *storage_errors()):
            pass
        print(
            f"error: all {len(mine)} trials of this sweep failed (study {name}); trial {first.number}: "
            f"{error or 'no error recorded'}; each job's run.log and results.json are in {sweep_dir}/<job num>/",
            file=sys.stderr,
        )
        return True


def register_sweeper() -> None:
    """Make SWEEPER_TARGET known to Hydra and importable (a module object in sys.modules: the class
    lives here, with the rest of the sweep code). Safe to call more than once."""
    import types

    import hydra_plugins
    from hydra.core.plugins import Plugins

    name = OptunaSweeper.__module__
    if name not in sys.modules:
        module = types.ModuleType(name, "src.sweeps.sweeper.OptunaSweeper under the name Hydra accepts for plugins")
        module.OptunaSweeper = OptunaSweeper
        sys.modules[name] = module
        setattr(hydra_plugins, name.split(".")[-1], module)
    Plugins.instance().register(OptunaSweeper)
