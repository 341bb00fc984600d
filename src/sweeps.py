"""Sweep support: Optuna study storage, trial ↔ job bookkeeping, objectives, per-job CPU threads.

Used from three places:

- the sweep files in sweeps/ (hydra.callbacks.optuna_study → `OptunaStudyCallback`,
  hydra.sweeper._target_ → `OptunaSweeper`, hydra.sweeper.custom_search_space → `record_trial`,
  hydra.sweeper.n_jobs → `${parallel_trials:...}`);
- src/run.py (`job_threads`, `job_record`, `objective`, `check_objectives`, `unknown_sweep`);
- the shell, for studies shared between processes or machines:

      python -m src.sweeps create sweep=csrae_optuna [hydra.sweeper.storage=URL ...]
      python -m src.sweeps show   sweep=csrae_optuna
      python -m src.sweeps export sweep=csrae_optuna [--out trials.csv]
      python -m src.sweeps close-stale sweep=csrae_optuna --older-than 120 [--force]
      python -m src.sweeps dashboard sweep=csrae_optuna [--port 8080]   (pip install -e .[dashboard])

Optuna is imported lazily: jobs import this module, and most of them never touch the study.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from hydra.experimental.callback import Callback
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as _PluginOptunaSweeper
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
TRIALS_SUBDIR = ".optuna"  # <sweep dir>/.optuna/<job num>.json: the trial each job runs
TRIALS_CSV = "trials.csv"  # written beside optimization_results.yaml


class ObjectiveError(ValueError):
    """The run finished but cannot give the sweep the objective it asked for (one line for the user)."""


# --- CPU share per job --------------------------------------------------------------------------

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


def job_threads(trainer_threads: int, hydra_cfg: Any) -> Optional[int]:
    """torch threads for one job when trainer.threads=0 (auto) and the launcher runs jobs side by side.

    joblib with N workers: each job gets cpus // N threads (2 workers on 2 cores: 1 thread each).
    submitit with cpus_per_task set: that many. Otherwise None (keep torch's default).
    """
    if trainer_threads:
        return None
    launcher = OmegaConf.select(hydra_cfg, "launcher") if hydra_cfg is not None else None
    if launcher is None:
        return None
    target = str(launcher.get("_target_", ""))
    if "JoblibLauncher" in target:
        return max(1, cpu_count() // workers(launcher.get("n_jobs", -1)))
    if "submitit" in target and launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    return None


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("parallel_trials"):
        OmegaConf.register_new_resolver("parallel_trials", parallel_trials)


_register_resolvers()


# --- objectives ---------------------------------------------------------------------------------

def objective_names(cfg: Any) -> list[str]:
    names = OmegaConf.select(cfg, "sweep.objectives", default=None) if OmegaConf.is_config(cfg) else None
    if names is None:
        return []
    if isinstance(names, str):
        return [names]
    return [str(n) for n in names]


def check_objectives(cfg: Any, known: Iterable[str]) -> None:
    """Fail before training when sweep.objectives names a key results.json does not have."""
    from src.config import ConfigError

    unknown = [n for n in objective_names(cfg) if n not in set(known)]
    if unknown:
        raise ConfigError(f"sweep.objectives: {unknown} are not results.json keys (e.g. val_nll, val_acc, test_nll)")


def objective(cfg: Any, run_dir: Path, val_nll: float) -> float | list[float]:
    """What the task returns to the sweeper.

    Default (no sweep.objectives, or [val_nll]): the validation NLL as a float. A sweep that lists
    several results.json keys (multi-objective, e.g. [val_nll, val_acc]) gets a list of floats in that
    order; it must give hydra.sweeper.direction in the same order. A missing or non-finite value
    raises ObjectiveError: the Optuna sweeper then records the trial as failed (a NaN return would
    crash the whole sweep with hydra-optuna-sweeper 1.3).
    """
    names = objective_names(cfg)
    if not names or names == ["val_nll"]:
        return val_nll
    results = json.loads((Path(run_dir) / "results.json").read_text())
    values = []
    for name in names:
        v = results.get(name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            hint = " (clustering metrics need prior.K > 1 and eval.clustering=true)" if "acc" in name else ""
            raise ObjectiveError(f"objective {name!r} is {v!r} in {run_dir}/results.json{hint}")
        values.append(float(v))
    return values[0] if len(values) == 1 else values


# --- trial <-> job ------------------------------------------------------------------------------

def _process_start(pid: int) -> Optional[str]:
    """The start time of a process in clock ticks since boot (Linux /proc), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the fields after "(comm)" start at 3


def this_process() -> dict:
    return {"pid": os.getpid(), "host": os.uname().nodename, "pid_started": _process_start(os.getpid())}


def process_alive(attrs: dict) -> Optional[bool]:
    """Is the process recorded in a trial's user attrs (this_process()) still running? None when this
    cannot be checked: another host, or a trial recorded without its process."""
    pid, host = attrs.get("pid"), attrs.get("host")
    if not isinstance(pid, int) or host != os.uname().nodename:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    started = attrs.get("pid_started")
    return started is None or _process_start(pid) in (None, started)


_job_counters: dict[str, Any] = {}


def record_trial(cfg: DictConfig, trial: Any) -> None:
    """hydra.sweeper.custom_search_space hook: link the Optuna trial and the job that will run it.

    The sweeper calls this once per trial, in the order it numbers the jobs (0, 1, ... per sweep
    dir), just before launching them. The trial gets user attributes sweep_dir and job_num (columns
    of trials.csv), and pid, host and pid_started of this (the sweeper's) process, which is the one
    that will tell the study the trial's result (close-stale checks it is gone). The job finds
    <sweep dir>/.optuna/<job num>.json and copies the study name, the trial number and the sampled
    params into its results.json.
    """
    sweep_dir = str(cfg.hydra.sweep.dir)
    job_num = next(_job_counters.setdefault(sweep_dir, itertools.count()))
    trial.set_user_attr("sweep_dir", sweep_dir)
    trial.set_user_attr("job_num", job_num)
    for key, value in this_process().items():
        trial.set_user_attr(key, value)
    record = {"study": trial.study.study_name, "trial": trial.number, "params": dict(trial.params)}
    path = Path(sweep_dir) / TRIALS_SUBDIR / f"{job_num}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, default=str))
    os.replace(tmp, path)


def _override_params(overrides: Iterable[str]) -> dict:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = {}
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.key_or_group == "sweep":
            continue
        try:
            params[o.key_or_group] = o.value()
        except Exception:  # noqa: BLE001 - a value the parser cannot type: keep the text
            params[o.key_or_group] = o.get_value_element_as_str()
    return params


def job_record(cfg: Any, hydra_cfg: Any, overrides: list[str]) -> dict:
    """Keys a multirun job adds to results.json so runs and trials join.

    sweep: the sweep file's name (null for a command-line grid); study / trial: the Optuna study and
    trial number (null without Optuna); params: the trial's sampled parameters for Optuna, else the
    job's overrides as a key -> value dict.
    """
    out = {"sweep": OmegaConf.select(cfg, "sweep.name", default=None), "study": None, "trial": None,
           "params": _override_params(overrides)}
    sweep_dir = OmegaConf.select(hydra_cfg, "sweep.dir", default=None)
    job_num = OmegaConf.select(hydra_cfg, "job.num", default=None)
    if sweep_dir is not None and job_num is not None:
        path = Path(str(sweep_dir)) / TRIALS_SUBDIR / f"{job_num}.json"
        if path.exists():
            out.update(json.loads(path.read_text()))
    return out


# --- the study ----------------------------------------------------------------------------------

_SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token|auth", re.IGNORECASE)
_USERINFO = re.compile(r"^(\w[\w+.-]*:?/*)?([^?#]*)@")  # scheme://, then everything up to the last @ before ?


def _secrets(url: str) -> list[str]:
    """The password of a storage URL and the values of secret-looking query keys."""
    from urllib.parse import parse_qsl, urlsplit

    found = []
    m = _USERINFO.match(url)
    if m and ":" in m.group(2):  # user:password@ (the user may contain @: split at the first : after it)
        found.append(m.group(2).split(":", 1)[1])
    found += [v for k, v in parse_qsl(urlsplit(url).query) if _SECRET_QUERY_KEY.search(k)]
    return [s for s in found if s]


def masked(url: Any) -> str:
    """A storage URL fit for logs and messages: the password (also one in the query string, e.g.
    `?password=...`) replaced by ***. User names may contain `@`."""
    from sqlalchemy.engine import make_url

    text = str(url)
    misparsed = False
    try:
        u = make_url(text)
        misparsed = "@" in (u.host or "")  # an unencoded @ in the password: the host holds the rest of it
        query = {k: ("***" if _SECRET_QUERY_KEY.search(k) else v) for k, v in u.query.items()}
        out = u.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy can parse
        out = text
    if misparsed or any(secret in out for secret in _secrets(text)):
        out = _USERINFO.sub(lambda m: (m.group(1) or "") + "***@", out)
        for secret in _secrets(text):
            out = out.replace(secret, "***")
    return out


def scrub(message: Any, url: Any) -> str:
    """message with the storage URL masked and its secrets removed wherever they appear."""
    text = str(message).replace(str(url), masked(url))
    for secret in _secrets(str(url)):
        text = text.replace(secret, "***")
    return text


def _sqlite_path(storage: Any) -> Optional[Path]:
    """The database file of a sqlite:/// URL (None for other URLs and in-memory databases)."""
    if not (isinstance(storage, str) and storage.startswith("sqlite:///")):
        return None
    path = storage[len("sqlite:///"):].split("?")[0]
    if path.startswith("file:"):  # sqlite:///file:PATH?mode=ro&uri=true
        path = path[len("file:"):]
    return Path(path) if path and path != ":memory:" else None


def prepare_storage(storage: Any) -> None:
    """SQLite cannot create its file in a missing directory: make the directory."""
    path = _sqlite_path(storage)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def directions_of(direction: Any) -> list[str]:
    if isinstance(direction, (list, tuple, ListConfig)):
        return [getattr(d, "name", str(d)) for d in direction]
    return [getattr(direction, "name", str(direction))]


class StudyStorageError(RuntimeError):
    """The study storage cannot be opened, read or written (one line for the user, secrets masked)."""


def storage_errors() -> tuple:
    """What opening or writing a study storage raises for a bad file, URL, driver or server."""
    from optuna.exceptions import OptunaError
    from sqlalchemy.exc import SQLAlchemyError

    return SQLAlchemyError, OptunaError, ImportError, OSError


_PERMANENT = ("not a database", "malformed", "readonly", "read-only", "unable to open")


def storage_error(storage: Any, e: BaseException) -> StudyStorageError:
    """One line saying what is wrong with the storage (optuna's own text for a failed write blames
    "exceeding max length", which is never the reason here)."""
    chain, x = [], e
    while x is not None and len(chain) < 6:
        chain.append(x)
        x = x.__cause__ or x.__context__
    text = " ".join(str(c) for c in chain).lower()
    where = f"study storage {masked(storage)}"
    if "not a database" in text or "malformed" in text:
        why = ("is not a readable SQLite database (corrupt, or not an SQLite file): move it aside or pass another "
               "hydra.sweeper.storage=...")
    elif "readonly" in text or "read-only" in text:
        why = "is read-only, and this command writes to the study: make the file (and its directory) writable"
    elif "unable to open" in text:
        why = "cannot be opened (a missing directory, or no permission)"
    elif isinstance(e, ImportError):
        why = f"needs a database driver that is not installed ({e})"
    else:
        root = next((c for c in reversed(chain) if "sqlalchemy" in type(c).__module__ or "sqlite" in str(c)), e)
        first = next((ln.strip() for ln in str(root).splitlines() if ln.strip()), "")
        why = f"cannot be used: {type(root).__name__}: {first}"
    return StudyStorageError(scrub(f"{where} {why}", storage))


def ensure_study(storage: str, study_name: str, directions: list[str], attempts: int = 5):
    """Create the study (or load it) before workers race for it; safe to call from several processes.
    Raises StudyStorageError for a storage that cannot be used (corrupt, read-only, unreachable)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        prepare_storage(storage)
    except OSError as e:
        raise storage_error(storage, e) from None
    for attempt in range(attempts):
        try:
            try:
                study = optuna.create_study(storage=storage, study_name=study_name, directions=directions,
                                            load_if_exists=True)
                have = [d.name for d in study.directions]
            except ValueError as e:  # optuna 2.10: "Cannot overwrite study direction"
                if "direction" not in str(e):
                    raise
                have = [d.name for d in optuna.load_study(study_name=study_name, storage=storage).directions]
            if have != [str(d).upper() for d in directions]:
                raise StudyStorageError(
                    f"study {study_name!r} in {masked(storage)} was created to {', '.join(have).lower()}, and this "
                    f"sweep asks to {', '.join(directions).lower()}: its best trial would be the wrong one. Pass "
                    "another hydra.sweeper.study_name=... (or the study's own direction)")
            return study
        except SQLAlchemyError as e:  # two processes creating the schema or the study at once: retry
            if attempt == attempts - 1 or any(p in str(e).lower() for p in _PERMANENT):
                raise storage_error(storage, e) from None
            log.warning("creating study %s: %s; retrying", study_name, type(e).__name__)
            time.sleep(0.5 + attempt)
        except storage_errors() as e:
            raise storage_error(storage, e) from None


def load_existing_study(storage: str, study_name: str):
    """The study, or StudyStorageError (no such file or study, a corrupt file, ...). Never creates a file."""
    import optuna

    path = _sqlite_path(storage)
    if path is not None and not path.is_file():
        raise StudyStorageError(f"no study storage at {path} (run `create` or the sweep first, or pass "
                                "hydra.sweeper.storage=...)")
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise StudyStorageError(f"no study {study_name!r} in {masked(storage)} (run `create` or the sweep first)"
                                ) from None
    except storage_errors() as e:
        raise storage_error(storage, e) from None


def study_summary(study) -> str:
    from collections import Counter

    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    parts = [f"{n} {s.lower()}" for s, n in sorted(counts.items())] or ["no trials yet"]
    return f"study {study.study_name}: " + ", ".join(parts)


def _run_dirs(sweep_dirs: Iterable[str], study_name: str) -> dict[int, tuple[str, Any]]:
    """trial number -> (run dir, results.json status) for this study's jobs under the given sweep dirs."""
    found = {}
    for sweep_dir in sweep_dirs:
        for res in sorted(Path(sweep_dir).glob("*/results.json")):
            try:
                r = json.loads(res.read_text())
            except (OSError, ValueError):
                continue
            if r.get("study") == study_name and r.get("trial") is not None:
                found[int(r["trial"])] = (str(res.parent), r.get("status"))
    return found


def export_trials(storage: str, study_name: str, out: Path, objectives: Optional[list[str]] = None) -> Path:
    """Write the study's trials_dataframe to CSV, with each trial's run_dir and results.json status."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    df = study.trials_dataframe()
    if objectives and len(objectives) > 1:
        df = df.rename(columns={f"values_{i}": name for i, name in enumerate(objectives)})
    elif objectives and "value" in df.columns:
        df = df.rename(columns={"value": objectives[0]})
    if "user_attrs_sweep_dir" in df.columns:
        runs = _run_dirs(df["user_attrs_sweep_dir"].dropna().unique(), study.study_name)
        df["run_dir"] = [runs.get(n, (None, None))[0] for n in df["number"]]
        df["run_status"] = [runs.get(n, (None, None))[1] for n in df["number"]]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, out)
    return out


def _sweeper_settings(config: DictConfig) -> Optional[tuple[str, str, list[str], list[str]]]:
    s = OmegaConf.select(config, "hydra.sweeper")
    if s is None or s.get("storage") is None or s.get("study_name") is None:
        return None
    return str(s.storage), str(s.study_name), directions_of(s.direction), objective_names(config)


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
    (marker / "owner.json").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    return marker


def preflight(config: DictConfig) -> None:
    """Checks that would fail every trial alike (bad fixed override, missing dataset, unknown objective,
    n_trials < 1):
    fail once, before the study is touched, instead of recording n_trials failed trials."""
    from src.config import validate
    from src.data import check_available
    from src.contract import RESULT_KEYS

    from src.config import ConfigError

    n_trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)
    if n_trials is not None and (not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1):
        raise ConfigError(f"hydra.sweeper.n_trials={n_trials}: the number of trials to run must be at least 1")
    check_objectives(config, RESULT_KEYS)
    validate(config)
    check_available(config.dataset)


class OptunaStudyCallback(Callback):
    """Hydra callback for Optuna sweeps (hydra.callbacks.optuna_study in the sweep files).

    on_multirun_start: check the fixed part of the config, claim the sweep dir, create the storage
    directory and the study (with the sweep's directions) before the sweeper opens it.
    on_multirun_end: write <sweep dir>/trials.csv beside optimization_results.yaml.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        settings = _sweeper_settings(config)
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
            log.warning("trials %s are RUNNING: other processes are working on this study, or an earlier sweep "
                        "was killed. If no other process is, `python -m src.sweeps close-stale sweep=%s "
                        "hydra.sweeper.storage=...` closes them (COMPLETE from their results.json, else FAIL).",
                        running, OmegaConf.select(config, "hydra.runtime.choices.sweep", default="NAME"))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        settings = _sweeper_settings(config)
        if settings is None:
            return
        storage, name, _, objectives = settings
        out = export_trials(storage, name, Path(str(config.hydra.sweep.dir)) / TRIALS_CSV, objectives)
        log.info("trials of study %s written to %s", name, out)


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


def _job_error(job_dir: Path) -> Optional[str]:
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
    """hydra-optuna-sweeper's sweeper, safe to stop (the Optuna sweep files' hydra.sweeper._target_,
    `hydra_plugins.csrae_sweeps.OptunaSweeper`: Hydra only accepts plugin classes from the
    hydra_plugins package, so this class is registered under that name when this module is imported):

    - SIGTERM or SIGINT (Ctrl-C): the trials this process was running are recorded FAIL with user
      attr interrupted=true (not left RUNNING), trials.csv is written, and the command exits 130 with
      one line.
    - every trial of this invocation failed: trials.csv is written and the command exits 2 with one
      line naming the first error and where the logs are (the plugin would stop on
      "Record does not exist" when the study has no completed trial).
    - the plugin's "Storage: URL" log line is masked like every other line of this code.
    """

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        self._config = config
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        import signal

        settings = _sweeper_settings(self._config)
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
            running = [t.number for t in self._mine(study, sweep_dir)
                       if t.state.name == "RUNNING" and t.user_attrs.get("pid") == me["pid"]]
            failed = fail_interrupted(study, running)
            out = export_trials(storage, name, Path(sweep_dir) / TRIALS_CSV, objectives)
            done = f"trial(s) {failed} recorded FAIL (interrupted), {out} written"
        except (StudyStorageError, *storage_errors()) as e:
            done = f"the study could not be updated ({scrub(e, storage)})"
        print(f"interrupted: sweep stopped; {done}; rerun the command (new hydra.sweep.dir) to add trials to "
              f"study {name}", file=sys.stderr)
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
        print(f"error: all {len(mine)} trials of this sweep failed (study {name}); trial {first.number}: "
              f"{error or 'no error recorded'}; each job's run.log and results.json are in {sweep_dir}/<job num>/",
              file=sys.stderr)
        return True


SWEEPER_TARGET = "hydra_plugins.csrae_sweeps.OptunaSweeper"
OptunaSweeper.__module__ = SWEEPER_TARGET.rsplit(".", 1)[0]


def _register_sweeper() -> None:
    """Make SWEEPER_TARGET importable and known to Hydra (a module object in sys.modules: the class
    lives here, in one file with the rest of the sweep code)."""
    import types

    import hydra_plugins
    from hydra.core.plugins import Plugins

    name = OptunaSweeper.__module__
    if name not in sys.modules:
        module = types.ModuleType(name, "src.sweeps.OptunaSweeper under the name Hydra accepts for plugins")
        module.OptunaSweeper = OptunaSweeper
        sys.modules[name] = module
        setattr(hydra_plugins, name.split(".")[-1], module)
    Plugins.instance().register(OptunaSweeper)


_register_sweeper()


# --- command line -------------------------------------------------------------------------------

def sweep_names() -> list[str]:
    """The named sweeps: the files in sweeps/ (conf/sweep links there)."""
    return option_names("sweep")


def option_names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# The config's optional groups: Hydra skips an unknown option of these silently, so a misspelt name
# would run the default configuration instead (one digits job instead of the sweep or the protocol).
OPTIONAL_GROUPS = {"sweep": "the files in sweeps/", "experiment": "the files in conf/experiment/"}


def unknown_sweep(overrides: Iterable[str]) -> Optional[str]:
    """The error for a `sweep=NAME` or `experiment=NAME` override naming no file of its group (None when
    all are known). Left to Hydra: overrides it cannot parse, and commands that add config directories
    (--config-dir, hydra.searchpath).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = list(overrides)
    if any(o.startswith(("-cd", "--config-dir")) or "searchpath" in o for o in overrides):
        return None
    for o in overrides:
        group = o.split("=", 1)[0].lstrip("+~")
        if group not in OPTIONAL_GROUPS or "=" not in o or o.startswith("~"):
            continue
        try:
            parsed = OverridesParser.create().parse_override(o)
            values = list(parsed.sweep_string_iterator()) if parsed.is_sweep_override() else [parsed.value()]
        except Exception:  # noqa: BLE001 - Hydra reports its own syntax errors
            continue
        names = option_names(group)
        values = [x for v in values for x in (v if isinstance(v, list) else [v])]  # experiment=[a,b]
        bad = [str(v) for v in values if v is not None and str(v) not in names]
        if bad:
            return (f"unknown {group} {', '.join(bad)}; choose one of {', '.join(names)} "
                    f"({OPTIONAL_GROUPS[group]})")
    return None


def _first_line(e: BaseException) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)



def compose_sweep(overrides: list[str]) -> DictConfig:
    """The composed config (with its hydra node) of `python -m src.run -m <overrides>`."""
    from hydra import compose, initialize_config_dir

    from src.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def _trial_values(trial, objectives: list[str], study_name: Optional[str] = None) -> Optional[list[float]]:
    """The objective values a RUNNING trial's job wrote to its results.json, if it completed."""
    sweep_dir, job_num = trial.user_attrs.get("sweep_dir"), trial.user_attrs.get("job_num")
    if sweep_dir is None or job_num is None:
        return None
    try:
        r = json.loads((Path(sweep_dir) / str(job_num) / "results.json").read_text())
    except (OSError, ValueError):
        return None
    if r.get("status") != "completed" or r.get("trial") != trial.number:
        return None
    if study_name is not None and r.get("study") not in (None, study_name):  # another study's trial of that number
        return None
    values = [r.get(n) for n in (objectives or ["val_nll"])]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return [float(v) for v in values]
    return None


def close_stale(study, older_than_min: float, objectives: Optional[list[str]] = None,
                force: bool = False) -> dict[str, list[int]]:
    """Close RUNNING trials started more than older_than_min minutes ago whose sweep process is gone
    (left by a killed sweep).

    A trial whose job finished (results.json completed, the sweeper killed before it could tell the
    study) becomes COMPLETE with the values from results.json; the others become FAIL. A trial whose
    sweep process is still alive on this host is never touched ("alive"); one whose process cannot be
    checked (started on another host, or recorded without its process) is closed only with
    force=True, else listed as "unverified".
    """
    import datetime

    from optuna.trial import TrialState

    cutoff = datetime.datetime.now() - datetime.timedelta(minutes=older_than_min)
    closed: dict[str, list[int]] = {"complete": [], "fail": [], "alive": [], "unverified": []}
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.datetime_start is None or t.datetime_start >= cutoff:
            continue
        alive = process_alive(t.user_attrs)
        if alive or (alive is None and not force):
            closed["alive" if alive else "unverified"].append(t.number)
            continue
        values = _trial_values(t, objectives or [], study.study_name)
        state = TrialState.COMPLETE if values is not None else TrialState.FAIL
        if hasattr(storage, "set_trial_state_values"):  # optuna >= 3
            storage.set_trial_state_values(t._trial_id, state, values)
        else:  # optuna 2.x
            if values is not None:
                storage.set_trial_values(t._trial_id, values)
            storage.set_trial_state(t._trial_id, state)
        closed["complete" if values is not None else "fail"].append(t.number)
    return closed


def fail_interrupted(study, trial_numbers: Iterable[int]) -> list[int]:
    """Record this process's RUNNING trials as FAIL with user attr interrupted=true (a stopped sweep)."""
    from optuna.trial import TrialState

    storage, done = study._storage, []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in set(trial_numbers):
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            if hasattr(storage, "set_trial_state_values"):  # optuna >= 3
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            else:
                storage.set_trial_state(t._trial_id, TrialState.FAIL)
            done.append(t.number)
    return done


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's default adds the usage block)
        print(f"error: {message} (see python -m src.sweeps --help)", file=sys.stderr)
        raise SystemExit(2)


def main(argv: Optional[list[str]] = None) -> int:
    parser = _Parser(prog="python -m src.sweeps", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["create", "show", "export", "close-stale", "dashboard"])
    parser.add_argument("overrides", nargs="*", help="as for src.run, e.g. sweep=csrae_optuna "
                                                     "hydra.sweeper.storage=postgresql://host/db")
    parser.add_argument("--out", help="export: CSV path (default outputs/optuna/<study>_trials.csv)")
    parser.add_argument("--older-than", type=float, default=60.0,
                        help="close-stale: minutes a RUNNING trial must have run (default 60)")
    parser.add_argument("--force", action="store_true",
                        help="close-stale: also close trials whose sweep process cannot be checked (started on "
                             "another host, or before processes were recorded); make sure no sweep runs them")
    parser.add_argument("--host", default="127.0.0.1", help="dashboard: address to serve on (default loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="dashboard: port (default 8080)")
    args = parser.parse_args(argv)
    if not math.isfinite(args.older_than) or args.older_than < 0:
        parser.error(f"--older-than {args.older_than}: give minutes, 0 or more")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    bad = unknown_sweep(args.overrides)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    try:
        cfg = compose_sweep(args.overrides)
        settings = _sweeper_settings(cfg)
    except Exception as e:  # noqa: BLE001 - every composition error is the user's input
        cause = f": {_first_line(e.__cause__)}" if e.__cause__ is not None else ""
        print(f"error: {_first_line(e).rstrip('.')}{cause}", file=sys.stderr)
        return 2
    if settings is None:
        print("error: no Optuna storage/study_name in this config; pass sweep=NAME of an Optuna sweep "
              f"({', '.join(sweep_names())})", file=sys.stderr)
        return 2
    storage, name, directions, objectives = settings
    try:
        return _command(args, storage, name, directions, objectives)
    except StudyStorageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except storage_errors() as e:
        print(f"error: {storage_error(storage, e)}", file=sys.stderr)
        return 2


def _command(args, storage: str, name: str, directions: list[str], objectives: list[str]) -> int:
    if args.command == "create":
        study = ensure_study(storage, name, directions)
        print(f"{study_summary(study)} ({', '.join(directions)}) in {masked(storage)}")
        return 0
    study = load_existing_study(storage, name)
    if args.command == "show":
        print(study_summary(study))
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        if done and len(directions) == 1:
            best = study.best_trial
            print(f"best trial {best.number}: {objectives[0] if objectives else 'value'} = {best.value:.4f}  "
                  f"params {best.params}")
        elif done:
            for t in study.best_trials:
                print(f"pareto trial {t.number}: values {t.values}  params {t.params}")
    elif args.command == "export":
        out = Path(args.out) if args.out else Path("outputs/optuna") / f"{name}_trials.csv"
        if out.is_dir():
            print(f"error: --out {out} is a directory; give a file name, e.g. {out / 'trials.csv'}", file=sys.stderr)
            return 2
        print(export_trials(storage, name, out, objectives))
    elif args.command == "close-stale":
        closed = close_stale(study, args.older_than, objectives, force=args.force)
        print(f"stale RUNNING trials closed: COMPLETE from results.json {closed['complete']}, "
              f"FAIL {closed['fail']}")
        if closed["alive"]:
            print(f"left RUNNING: trials {closed['alive']} (their sweep process is still running on this host)")
        if closed["unverified"]:
            print(f"warning: trials {closed['unverified']} left RUNNING: their sweep process cannot be checked "
                  "(another host, or recorded before processes were); if no sweep is running them, rerun with "
                  "--force", file=sys.stderr)
    elif args.command == "dashboard":
        serve_dashboard(storage, study, args.host, args.port)
    return 0


def serve_dashboard(storage: str, study, host: str, port: int) -> None:
    """Serve optuna-dashboard (0.14.x, the line that supports optuna 2.10) for the storage until Ctrl-C."""
    try:
        from optuna_dashboard import run_server
    except ImportError:
        print("error: optuna-dashboard is not installed: pip install -e '.[dashboard]'", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"{study_summary(study)}: http://{host}:{port}/dashboard/studies/{study._study_id}  (Ctrl-C stops)",
          flush=True)
    run_server(storage, host=host, port=port)


if __name__ == "__main__":
    sys.exit(main())
