"""Batches of trials run as SLURM job arrays (hydra/launcher=slurm, submitit): jobs that ended without a
result, and a batch that `scancel` cancelled as a whole.

The submitit launcher waits for its jobs' results in turn and raises submitit's UncompletedJobError at the
first job that has none (cancelled while pending, killed before it could write one): the results of the
batch's other jobs would be lost with it. `batch_results` collects every job's result again through
submitit's Job API and stands a failed JobReturn (error JobLost) in for each missing one.

`scancel <array job id>` (or of every task of a batch) cancels all the jobs the sweep is waiting for: the
user stopping the sweep, which `cancelled_batch` tells the sweep so it stops as for Ctrl-C. One task
cancelled among others fails its trial only, and the sweep goes on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

# submitit's UncompletedJobError for a job array's task that ended without writing its result
_NO_RESULT = re.compile(r"Job (\d+)_\d+ \(task: \d+\) with path .*\nhas not produced any output", re.S)
STATES_WAIT_S = 60  # how long sacct may take to record the end of the batch's jobs


class JobLost(RuntimeError):
    """A SLURM job of the batch ended without a result: its trial's error."""

    def __init__(self, job_id: str, message: str):
        super().__init__(message)
        self.job_id = job_id


class BatchCancelled(Exception):
    """SLURM cancelled every job of a batch (scancel): the user stopped the sweep."""

    def __init__(self, job_ids: Sequence[str], trials: Sequence[int]):
        super().__init__(f"SLURM job(s) {', '.join(job_ids)} cancelled")
        self.job_ids, self.trials = list(job_ids), list(trials)


def is_slurm(config: Any) -> bool:
    return "SlurmLauncher" in str(OmegaConf.select(config, "hydra.launcher._target_", default=""))


def lost_array(config: Any, error: BaseException) -> str | None:
    """The job array's id when the launcher raised `error` for one of its jobs that ended without a
    result; None for any other error."""
    if not is_slurm(config):
        return None
    from submitit.core.utils import FailedJobError, UncompletedJobError

    if not isinstance(error, UncompletedJobError) or isinstance(error, FailedJobError):
        return None
    match = _NO_RESULT.match(str(error))
    return match.group(1) if match else None


def batch_results(config: Any, array: str, n_jobs: int) -> list[JobReturn]:
    """Each job's JobReturn for the batch launched as job array `array` (task i runs the batch's i-th
    trial), once every job has ended; a job without a result gets a failed one whose error is JobLost
    ("interrupted" when SLURM cancelled it, so the trial is recorded interrupted)."""
    import submitit
    from submitit.core.utils import UncompletedJobError

    returns = []
    for task in range(n_jobs):
        job_id = f"{array}_{task}"
        job = submitit.SlurmJob(folder=str(config.hydra.launcher.submitit_folder), job_id=job_id)
        try:
            returns.append(job.result())
            continue
        except UncompletedJobError:
            pass
        state = job.watcher.get_state(job_id, mode="force")
        if state.startswith("CANCELLED"):
            message = f"SLURM job {job_id} was cancelled before it wrote a result (interrupted)"
        else:
            message = f"SLURM job {job_id} ended without a result (state {state}); its log: {job.paths.stderr}"
        returns.append(JobReturn(status=JobStatus.FAILED, _return_value=JobLost(job_id, message)))
    return returns


def _job_id(ret: JobReturn) -> str | None:
    if isinstance(ret._return_value, JobLost):
        return ret._return_value.job_id
    return OmegaConf.select(ret.hydra_cfg, "hydra.job.id", default=None) if ret.hydra_cfg is not None else None


def _interrupted(ret: JobReturn) -> bool:
    """The job failed because it was stopped: SIGTERM in the job (src.run.JobInterrupted), or a JobLost
    that SLURM cancelled."""
    return ret.status == JobStatus.FAILED and "interrupted" in str(ret._return_value)


def cancelled_batch(config: Any, returns: Sequence[JobReturn]) -> list[str]:
    """The batch's SLURM job ids when SLURM records every one of them CANCELLED, else []. SLURM is asked
    only when every job of the batch was stopped; a batch stopped by its time limit or by preemption is
    not cancelled (the sweep goes on)."""
    if not is_slurm(config) or not returns or not all(_interrupted(r) for r in returns):
        return []
    ids = [_job_id(r) for r in returns]
    if None in ids:
        return []
    from submitit import SlurmJob

    watcher = SlurmJob.watcher
    for job_id in ids:
        watcher.register_job(job_id)
    # A job's result is written a moment before sacct records the job's end: wait for that.
    deadline = time.time() + STATES_WAIT_S
    while True:
        watcher.update()
        if all(watcher.is_done(i, mode="cache") for i in ids) or time.time() > deadline:
            break
        time.sleep(1)
    states = [watcher.get_state(i, mode="cache") for i in ids]
    return ids if all(s.startswith("CANCELLED") for s in states) else []
