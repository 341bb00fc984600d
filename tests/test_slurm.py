"""Sweeps on a real SLURM cluster through `hydra/launcher=slurm` (hydra-submitit-launcher).

Needs a reachable cluster: CI starts a single-node one with `.ci/slurm.sh start` (root). Elsewhere
these tests skip unless `sinfo` answers. Jobs ask for 1 CPU and 1 GB each; everything else as in
tests/test_sweeps.py (digits, 1 epoch, S = 10, storage and sweep dirs under tmp_path).
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import time
from pathlib import Path

import pytest
from cli import subprocess_env
from servers import slurm_problem, unavailable
from test_sweeps import _command, load_study, optuna_args, results, states, sweep

SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=15",
]

# The cancel tests train some trials for hundreds of epochs: a sampled corner of the search space (an
# lr of 1e-2 with a 2-d latent) may diverge there and fail a trial the test expects to complete. What
# they test is the cancel, so every searched value is fixed and a rerun trains the same trials.
STEADY = ["prior.K=3", "model.reg_weight=1", "model.latent_dim=8", "optimizer.lr=0.001"]


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster():
    problem = slurm_problem()
    if problem:
        unavailable("SLURM", problem, "`bash .ci/slurm.sh start` (as root) and SLURM_CONF=/tmp/csrae-slurm/slurm.conf")


def slurm_states(sweep_dir: Path, settle_s: float = 60) -> dict[str, str]:
    """SLURM's own record (sacct) of every job submitit submitted for this sweep: id -> final state.

    A job's result file appears a moment before SLURM sees the job end: wait for it to settle."""
    ids = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert ids, f"no SLURM job under {sweep_dir / '.submitit'}"
    deadline = time.time() + settle_s
    while True:
        p = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(ids)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        found = dict(line.split("|", 1) for line in p.stdout.splitlines() if line)
        states = {i: found.get(i, "MISSING").split()[0] for i in ids}
        if not set(states.values()) & {"PENDING", "RUNNING", "COMPLETING"} or time.time() > deadline:
            return states
        time.sleep(1)


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def test_grid_runs_as_slurm_jobs(tmp_path):
    d = tmp_path / "grid"
    p = sweep(tmp_path, "model=vae,csrae", "prior=gmm", "prior.K=1,3", *SLURM, f"hydra.sweep.dir={d}")
    jobs = job_dirs(d)
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        r = results(job)
        assert r["status"] == "completed", r.get("error")
        assert math.isfinite(r["val_nll"]) and math.isfinite(r["test_nll"])
        seen.add((r["model"], r["K"]))
    assert seen == {("vae", 1), ("vae", 3), ("csrae", 1), ("csrae", 3)}
    assert sorted(slurm_states(d).values()) == ["COMPLETED"] * 4
    assert "Bypassing sacct error" not in p.stdout + p.stderr  # accounting works: no warning per poll


def test_optuna_sweep_on_slurm_two_trials_per_batch(tmp_path):
    d = tmp_path / "optuna"
    sweep(tmp_path, *optuna_args(tmp_path, "csrae_optuna", "optuna", 4), *SLURM, "hydra.sweeper.n_jobs=2")
    study = load_study(tmp_path, "csrae_optuna")
    assert states(study) == {"COMPLETE": 4}
    for t in study.trials:
        r = results(d / str(t.user_attrs["job_num"]))
        assert r["status"] == "completed" and r["trial"] == t.number and r["val_nll"] == pytest.approx(t.value)
    slurm = slurm_states(d)
    assert sorted(slurm.values()) == ["COMPLETED"] * 4
    arrays = sorted({i.split("_")[0] for i in slurm}, key=int)
    assert len(arrays) == 2 and sorted(slurm) == sorted(f"{a}_{t}" for a in arrays for t in (0, 1))  # 2 batches of 2
    assert (d / "trials.csv").exists() and (d / "optimization_results.yaml").exists()


def test_journal_file_sweep_with_pruning_on_slurm(tmp_path):
    """A journal-file study (no database server) on the filesystem the nodes share: every SLURM job
    reports its interim values to its trial through the file, and a median pruner stops the trials
    worse than the first two at epoch 2 (or lets them finish: PRUNED or COMPLETE, never FAIL)."""
    import optuna

    from src.sweeps.storage import open_storage

    journal = tmp_path / "studies" / "vae.log"
    d = tmp_path / "journal"
    sweep(
        tmp_path,
        "sweep=vae_optuna",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        f"hydra.sweeper.storage={journal}",
        f"hydra.sweep.dir={d}",
        "pruner=median",
        "pruner.n_startup_trials=2",
        "trainer.warmup_epochs=1",
        *SLURM,
        epochs=4,
        timeout=900,
    )
    study = optuna.load_study(study_name="vae_optuna", storage=open_storage(str(journal)))
    assert set(states(study)) <= {"COMPLETE", "PRUNED"} and len(study.trials) == 4, states(study)
    for t in study.trials:
        assert sorted(t.intermediate_values)[:1] == [1], t.intermediate_values  # reported from the node
        r = results(d / str(t.user_attrs["job_num"]))
        assert r["status"] == ("pruned" if t.state.name == "PRUNED" else "completed")
    assert sorted(slurm_states(d).values()) == ["COMPLETED"] * 4


@contextlib.contextmanager
def sweep_with_jobs_training(command: list[str], cwd: Path, sweep_dir: Path, jobs: list[str]):
    """Start the sweep command and yield its process once every job in `jobs` has trained two epochs.
    On the way out a sweep still running is killed and its SLURM jobs cancelled."""
    proc = subprocess.Popen(
        command, cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            assert proc.poll() is None, f"the sweep ended before the cancel:\n{proc.stdout.read()[-4000:]}"
            metrics = [sweep_dir / job / "metrics.csv" for job in jobs]
            if all(m.exists() and len(m.read_text().splitlines()) >= 3 for m in metrics):  # header + 2 epochs
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"jobs {jobs} never all started training")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(
                ["scancel", *(p.name for p in (sweep_dir / ".submitit").glob("*_*") if p.is_dir())], timeout=30
            )


def slow_first_trial(cfg, trial) -> None:
    """custom_search_space hook: trial 0 trains for 400 epochs (long enough to be cancelled while it
    runs), the others for 1."""
    epochs = 400 if trial.number == 0 else 1
    trial.suggest_int("trainer.epochs", epochs, epochs)


def test_scancelled_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    d = tmp_path / "cancel"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = [
        *optuna_args(tmp_path, "vae_optuna", "cancel", 4),
        *SLURM,
        *STEADY,
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.custom_search_space=tests.test_slurm.slow_first_trial",
    ]
    command = [a for a in _command(*args) if not a.startswith("trainer.epochs=")]  # the hook sets it
    # Job 0 (trial 0) is task 0 of the first job array; cancel it once it trains.
    with sweep_with_jobs_training(command, cwd, d, ["0"]) as proc:
        first = [p.name for p in (d / ".submitit").iterdir() if p.name.endswith("_0")]
        assert len(first) == 1, first
        subprocess.run(["scancel", first[0]], check=True, timeout=30)
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]

    r = results(d / "0")
    assert r["status"] == "interrupted" and r["trial"] == 0 and r["epochs"] == 400
    study = load_study(tmp_path, "vae_optuna")
    assert states(study) == {"COMPLETE": 3, "FAIL": 1}, out[-4000:]  # the sweep went on to the second batch
    assert study.trials[0].state.name == "FAIL"
    for job in ("1", "2", "3"):
        assert results(d / job)["status"] == "completed"
    slurm = slurm_states(d)
    assert slurm[first[0]] == "CANCELLED" and sorted(slurm.values()).count("COMPLETED") == 3
    assert study.trials[0].user_attrs["job_num"] == 0


def slow_first_two_trials(cfg, trial) -> None:
    """custom_search_space hook: trials 0 and 1 train for 200 epochs (long enough to cancel a job that
    waits for them), the others for 1."""
    epochs = 200 if trial.number < 2 else 1
    trial.suggest_int("trainer.epochs", epochs, epochs)


def test_scancelled_pending_job_fails_its_trial_and_the_sweep_goes_on(tmp_path):
    """A job cancelled before it starts has no result (submitit's launcher raises for it): its trial is
    recorded FAIL (interrupted), the batch's other jobs are still waited for, and the sweep goes on."""
    d = tmp_path / "cancel_pending"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = [
        *optuna_args(tmp_path, "vae_optuna", "cancel_pending", 4),
        *SLURM,
        *STEADY,
        "hydra.launcher.array_parallelism=2",  # job 2 waits for job 0 or 1 to end
        "hydra.sweeper.n_jobs=3",
        "hydra.sweeper.custom_search_space=tests.test_slurm.slow_first_two_trials",
        "pruner=none",
    ]
    command = [a for a in _command(*args) if not a.startswith("trainer.epochs=")]  # the hook sets it
    with sweep_with_jobs_training(command, cwd, d, ["0", "1"]) as proc:
        pending = [p.name for p in (d / ".submitit").iterdir() if p.is_dir() and p.name.endswith("_2")]
        assert len(pending) == 1 and not (d / "2").exists(), pending
        subprocess.run(["scancel", pending[0]], check=True, timeout=30)
        out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]

    study = load_study(tmp_path, "vae_optuna")
    assert states(study) == {"COMPLETE": 3, "FAIL": 1}, out[-4000:]  # the sweep went on to the second batch
    assert study.trials[2].state.name == "FAIL" and study.trials[2].user_attrs.get("interrupted") is True
    assert not (d / "2" / "results.json").exists()
    for job in ("0", "1", "3"):
        assert results(d / job)["status"] == "completed"


def slow_trials(cfg, trial) -> None:
    """custom_search_space hook: every trial trains for 400 epochs (long enough to be cancelled while it runs)."""
    trial.suggest_int("trainer.epochs", 400, 400)


def test_scancelled_array_stops_the_sweep(tmp_path):
    """`scancel <array job id>` cancels every job of a batch: the user stopping the sweep. One line, exit
    130 as for Ctrl-C, the batch's trials FAIL (interrupted), trials.csv written, no trial after it.

    The batch has 3 trials of which SLURM runs 2 at once (array_parallelism=2): the cancel finds 2 jobs
    training and 1 that never started (no result, which submitit's launcher raises for)."""
    d = tmp_path / "cancel_all"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = [
        *optuna_args(tmp_path, "vae_optuna", "cancel_all", 6),
        *SLURM,
        *STEADY,
        "hydra.launcher.array_parallelism=2",
        "hydra.sweeper.n_jobs=3",
        "hydra.sweeper.custom_search_space=tests.test_slurm.slow_trials",
    ]
    command = [a for a in _command(*args) if not a.startswith("trainer.epochs=")]  # the hook sets it
    with sweep_with_jobs_training(command, cwd, d, ["0", "1"]) as proc:
        tasks = sorted(p.name for p in (d / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
        array = tasks[0].split("_")[0]
        assert tasks == [f"{array}_{i}" for i in range(3)], tasks
        subprocess.run(["scancel", array], check=True, timeout=30)
        out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("interrupted: sweep stopped, SLURM job(s) "), last
    assert all(t in last for t in tasks) and str(d / "trials.csv") in last, last
    assert (d / "trials.csv").exists()

    study = load_study(tmp_path, "vae_optuna")
    assert states(study) == {"FAIL": 3}  # no trial after the cancel, none left RUNNING
    for t in study.trials:
        assert t.user_attrs.get("interrupted") is True, t.user_attrs
    assert [results(d / job)["status"] for job in ("0", "1")] == ["interrupted"] * 2
    assert not (d / "2" / "results.json").exists()  # never started
    p = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", array], capture_output=True, text=True)
    assert {line.split("|")[1].split()[0] for line in p.stdout.splitlines()} == {"CANCELLED"}, p.stdout
    assert sorted(p.name for p in (d / ".submitit").iterdir() if p.is_dir() and "_" in p.name) == tasks  # no new batch
