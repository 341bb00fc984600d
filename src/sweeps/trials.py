"""Optuna trials and the jobs that run them: record_trial links each trial to its job dir before the
job starts; close_stale and fail_interrupted close the trials a killed or stopped sweep left RUNNING.

A trial carries user attrs sweep_dir and job_num (its job: <sweep_dir>/<job_num>/results.json) and
pid, host and pid_started of the sweeper process that will tell the study its result.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.sweeps.jobs import TRIALS_SUBDIR
from src.sweeps.storage import retrying

# --- the sweeper's process ----------------------------------------------------------------------


def _process_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot (Linux /proc), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the fields after "(comm)" start at 3


def this_process() -> dict:
    return {"pid": os.getpid(), "host": os.uname().nodename, "pid_started": _process_start(os.getpid())}


def process_alive(attrs: dict) -> bool | None:
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


# --- trial -> job -------------------------------------------------------------------------------

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
    storage = OmegaConf.select(cfg, "hydra.sweeper.storage")
    for key, value in {"sweep_dir": sweep_dir, "job_num": job_num, **this_process()}.items():
        retrying(storage, trial.set_user_attr, key, value)
    # trial_id: what a job needs to report interim values to its trial (src.sweeps.pruning)
    record = {
        "study": trial.study.study_name,
        "trial": trial.number,
        "trial_id": trial._trial_id,
        "params": dict(trial.params),
    }
    path = Path(sweep_dir) / TRIALS_SUBDIR / f"{job_num}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, default=str))
    os.replace(tmp, path)


# --- job -> trial: closing RUNNING trials -------------------------------------------------------


def _trial_values(trial, objectives: list[str], study_name: str | None = None) -> list[float] | None:
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


def close_stale(
    study, older_than_min: float, objectives: list[str] | None = None, force: bool = False
) -> dict[str, list[int]]:
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
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.datetime_start is None or t.datetime_start >= cutoff:
            continue
        alive = process_alive(t.user_attrs)
        if alive or (alive is None and not force):
            closed["alive" if alive else "unverified"].append(t.number)
            continue
        values = _trial_values(t, objectives or [], study.study_name)
        state = TrialState.COMPLETE if values is not None else TrialState.FAIL
        study.tell(t.number, values, state, skip_if_finished=True)
        closed["complete" if values is not None else "fail"].append(t.number)
    return closed


def fail_interrupted(study, trials: Iterable, storage: Any = None) -> list[int]:
    """Record this process's unfinished trials (optuna Trial objects) as FAIL with user attr
    interrupted=true (a stopped sweep). Storage calls are retried (src.sweeps.storage.retrying)."""
    from optuna.trial import TrialState

    done = []
    for trial in trials:
        if retrying(storage, study.get_trials, deepcopy=False)[trial.number].state == TrialState.RUNNING:
            retrying(storage, trial.set_user_attr, "interrupted", True)
            retrying(storage, study.tell, trial, state=TrialState.FAIL, skip_if_finished=True)
            done.append(trial.number)
    return done


def trials_from_jobs(sweep_dir: Path, out: Path, objectives: list[str]) -> Path:
    """trials.csv from the job dirs' results.json alone, for when the study cannot be read: one row per
    job (trial number, the job's status, its params and objectives, its run dir)."""
    import pandas as pd

    rows = []
    for res in sorted(Path(sweep_dir).glob("*/results.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        try:
            r = json.loads(res.read_text())
        except (OSError, ValueError):
            continue
        params = {f"params_{k}": v for k, v in (r.get("params") or {}).items()}
        values = {name: r.get(name) for name in objectives}
        rows.append(
            {"number": r.get("trial"), "run_status": r.get("status"), **params, **values, "run_dir": str(res.parent)}
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    pd.DataFrame(rows, columns=None if rows else ["number", "run_status", *objectives, "run_dir"]).to_csv(
        tmp, index=False
    )
    os.replace(tmp, out)
    return out
