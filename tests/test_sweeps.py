"""Sweeps: grid multiruns, Optuna studies (resume, failures, kills), launchers, and every sweep file.

The end-to-end tests run `python -m src.run -m ...` in subprocesses on digits with tiny settings,
from an empty working directory, with the Optuna storage and hydra.sweep.dir under tmp_path (never
the repo's outputs/). The composition tests are in-process and fast.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from cli import subprocess_env
from helpers import CONF, REPO, TINY
from omegaconf import OmegaConf

SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))


# --- helpers ------------------------------------------------------------------------------------


def _command(*overrides: str, threads: int = 1, epochs: int = 1) -> list[str]:
    return [
        sys.executable,
        "-m",
        "src.run",
        "-m",
        *overrides,
        *TINY,
        f"trainer.epochs={epochs}",
        f"trainer.threads={threads}",
    ]


def sweep(
    tmp_path: Path, *overrides: str, threads: int = 1, epochs: int = 1, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess:
    """Run a multirun in a subprocess from an empty cwd (so nothing lands in the repo)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    p = subprocess.run(
        _command(*overrides, threads=threads, epochs=epochs),
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p


def optuna_args(tmp_path: Path, name: str, sweep_dir: str, n_trials: int, study: str | None = None) -> list[str]:
    return [
        f"sweep={name}",
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
        f"hydra.sweep.dir={tmp_path / sweep_dir}",
    ] + ([f"hydra.sweeper.study_name={study}"] if study else [])


def load_study(tmp_path: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def states(study) -> dict:
    from collections import Counter

    return dict(Counter(t.state.name for t in study.trials))


def results(job_dir: Path) -> dict:
    return json.loads((job_dir / "results.json").read_text())


def compose(*overrides: str):
    from src.config import compose_config

    return compose_config(*overrides, hydra=True)


def fail_second_trial(cfg, trial) -> None:
    """custom_search_space hook for the failure test: give the study's trial 1 an invalid
    trainer.batch_size so its job raises (ConfigError) like a diverging or crashing trial would."""
    if trial.number == 1:
        trial.suggest_int("trainer.batch_size", 0, 0)


# --- grid multirun ------------------------------------------------------------------------------


def test_grid_sweep_writes_every_jobs_outputs(tmp_path):
    sweep(tmp_path, "model=vae,csrae", "prior=gmm", "prior.K=1,3", f"hydra.sweep.dir={tmp_path / 'grid'}")
    jobs = sorted(p for p in (tmp_path / "grid").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        r = results(job)
        assert r["status"] == "completed", r.get("error")
        assert math.isfinite(r["val_nll"]) and math.isfinite(r["test_nll"])
        assert (job / "metrics.csv").exists() and (job / "checkpoints" / "last.pt").exists()
        assert (job / ".hydra" / "config.yaml").exists() and (job / "run.log").exists()
        assert r["job_num"] == int(job.name) and r["sweep"] is None and r["trial"] is None
        assert r["params"]["model"] == r["model"] and r["params"]["prior.K"] == r["K"]
        seen.add((r["model"], r["K"]))
    assert seen == {("vae", 1), ("vae", 3), ("csrae", 1), ("csrae", 3)}
    assert not (tmp_path / "cwd" / "outputs").exists()


# --- Optuna: persistence, resume, trials.csv, trial params in results.json ----------------------


def test_optuna_sweep_completes_and_rerun_resumes_the_study(tmp_path):
    import pandas as pd

    sweep(tmp_path, *optuna_args(tmp_path, "csrae_optuna", "first", 2))
    study = load_study(tmp_path, "csrae_optuna")
    assert states(study) == {"COMPLETE": 2}

    first = tmp_path / "first"
    assert (first / "optimization_results.yaml").exists()
    best = OmegaConf.load(first / "optimization_results.yaml")
    assert best.best_value == pytest.approx(study.best_value)
    table = pd.read_csv(first / "trials.csv")
    assert len(table) == 2 and {"val_nll", "run_dir", "run_status", "params_prior.K"} <= set(table.columns)
    assert (table["run_status"] == "completed").all()
    for t in study.trials:  # every job's results.json carries its trial (study, number, params)
        job = first / str(t.user_attrs["job_num"])
        r = results(job)
        assert (r["study"], r["trial"], r["sweep"]) == ("csrae_optuna", t.number, "csrae_optuna")
        assert r["params"] == pytest.approx(t.params)
        assert r["val_nll"] == pytest.approx(t.value)
        assert r["K"] == t.params["prior.K"] and r["model"] == "csrae"

    sweep(tmp_path, *optuna_args(tmp_path, "csrae_optuna", "second", 2))
    study = load_study(tmp_path, "csrae_optuna")
    assert states(study) == {"COMPLETE": 4}
    assert [t.number for t in study.trials] == list(range(4))
    table = pd.read_csv(tmp_path / "second" / "trials.csv")
    assert len(table) == 4 and (table["run_status"] == "completed").all()
    assert set(table["run_dir"].map(lambda p: Path(p).parent.name)) == {"first", "second"}


def test_failing_trial_is_recorded_failed_and_the_sweep_goes_on(tmp_path):
    p = sweep(
        tmp_path,
        *optuna_args(tmp_path, "vae_optuna", "fail", 3),
        "hydra.sweeper.custom_search_space=tests.test_sweeps.fail_second_trial",
    )
    study = load_study(tmp_path, "vae_optuna")
    assert states(study) == {"COMPLETE": 2, "FAIL": 1}
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    assert failed.number == 1 and failed.values is None
    assert all(math.isfinite(t.value) for t in study.trials if t.state.name == "COMPLETE")
    r = results(tmp_path / "fail" / str(failed.user_attrs["job_num"]))
    assert r["status"] == "failed" and "batch_size" in r["error"] and r["val_nll"] is None
    assert "trial 1 failed: ConfigError: trainer.batch_size" in p.stdout + p.stderr
    assert (p.stdout + p.stderr).count("trainer.batch_size must be") == 1  # each failure reported once


def test_sweep_killed_with_sigkill_loses_no_finished_trial(tmp_path):
    """SIGKILL the sweeper while job 1 trains: the finished trial stays, the killed job's results.json
    says `running`, close-stale closes the orphaned trial, and reusing the sweep dir is refused.
    (That a rerun on the same storage adds trials is the resume test above.)"""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = optuna_args(tmp_path, "vae_optuna", "killed", 5)
    proc = subprocess.Popen(
        _command(*args, epochs=8), cwd=cwd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    killed = tmp_path / "killed"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (killed / "1" / "results.json").exists():
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.1)
        assert (killed / "1" / "results.json").exists(), "job 1 never started"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    assert results(killed / "0")["status"] == "completed"
    assert results(killed / "1")["status"] == "running"  # what tells a half-written job apart
    study = load_study(tmp_path, "vae_optuna")
    by_number = {t.number: t.state.name for t in study.trials}
    assert by_number[1] == "RUNNING" and by_number[0] in ("COMPLETE", "RUNNING")

    from src.sweeps.trials import close_stale

    closed = close_stale(study, older_than_min=0, objectives=["val_nll"])
    assert 1 in closed["fail"]
    study = load_study(tmp_path, "vae_optuna")
    assert study.trials[0].state.name == "COMPLETE"  # finished before the kill: kept (or recovered)
    assert study.trials[0].value == pytest.approx(results(killed / "0")["val_nll"])

    # Reusing the killed sweep's dir would overwrite its jobs: refused before anything runs.
    p = sweep(tmp_path, *args, check=False)
    assert p.returncode == 2 and "already holds an Optuna sweep" in p.stderr
    assert results(killed / "0")["status"] == "completed"
    assert states(load_study(tmp_path, "vae_optuna")) == {"COMPLETE": 1, "FAIL": 1}


# --- launchers ----------------------------------------------------------------------------------


def test_joblib_launcher_runs_trials_side_by_side_with_a_cpu_share_each(tmp_path):
    # trainer.threads=0 (auto): each of the 2 workers gets cpus // 2 torch threads.
    p = sweep(
        tmp_path,
        *optuna_args(tmp_path, "vae_optuna", "joblib", 2),
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        threads=0,
    )
    out = p.stdout + p.stderr
    assert "n_jobs=2" in out and "is launching 2 jobs" in out  # one batch of 2 trials
    assert states(load_study(tmp_path, "vae_optuna")) == {"COMPLETE": 2}
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    for job in ("0", "1"):
        assert results(tmp_path / "joblib" / job)["status"] == "completed"
        assert f"trainer.threads={share} (this job's share" in (tmp_path / "joblib" / job / "run.log").read_text()


def test_submitit_local_launcher_runs(tmp_path):
    sweep(
        tmp_path,
        *optuna_args(tmp_path, "csrae_optuna", "submitit", 2),
        "hydra/launcher=submitit_local",
        "hydra.sweeper.n_jobs=2",
    )
    study = load_study(tmp_path, "csrae_optuna")
    assert states(study) == {"COMPLETE": 2}
    assert (tmp_path / "submitit" / ".submitit").is_dir()
    for t in study.trials:
        r = results(tmp_path / "submitit" / str(t.user_attrs["job_num"]))
        assert r["status"] == "completed" and r["trial"] == t.number and r["val_nll"] == pytest.approx(t.value)


@pytest.mark.parametrize("launcher", ["slurm", "slurm_gpu", "submitit_slurm", "joblib", "submitit_local"])
def test_launcher_configs_compose(launcher):
    from src.resolvers import parallel_trials
    from src.sweeps.jobs import job_threads

    cfg = compose("sweep=csrae_optuna", f"hydra/launcher={launcher}")
    lc = cfg.hydra.launcher
    assert lc._target_.startswith("hydra_plugins.")
    OmegaConf.to_container(lc, resolve=True)  # every interpolation resolves
    n_jobs = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)["n_jobs"]
    assert n_jobs == parallel_trials(OmegaConf.select(cfg, "hydra.launcher.n_jobs", default=1))
    if launcher.startswith("slurm"):
        assert lc._target_.endswith("SlurmLauncher") and lc.timeout_min > 0 and lc.mem_gb > 0
        assert (lc.gpus_per_node == 1) == (launcher == "slurm_gpu")
        assert job_threads(0, cfg.hydra) == lc.cpus_per_task
        assert job_threads(2, cfg.hydra) is None  # an explicit trainer.threads wins


# --- every sweep file ---------------------------------------------------------------------------


def _swept_values(key: str, value: str) -> list:
    """The values a sweep file's `key: value` can give a job: choices, or an interval's endpoints."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    override = OverridesParser.create().parse_override(f"{key}={value}")
    if not override.is_sweep_override():
        return [override.value()]
    v = override.value()
    if isinstance(v, IntervalSweep):
        return [v.start, v.end]
    return list(override.sweep_iterator())


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.stem for p in SWEEP_FILES])
def test_every_sweep_file_composes_and_its_keys_exist(path):
    """Catches a typo in a sweep's parameter names or values here, not at trial 0 on a cluster."""

    from src.config import validate
    from src.contract import RESULT_KEYS

    name = path.stem
    cfg = compose(f"sweep={name}")
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.sweep.name == name and cfg.sweep.question
    params = cfg.hydra.sweeper.params
    assert params, f"{name} sweeps nothing"
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    for key, value in params.items():
        values = _swept_values(key, str(value))
        if key in groups:
            for option in values:  # a config group: every option must be a file of that group
                assert (CONF / key / f"{option}.yaml").exists(), f"{name}: {key}={option} is not a config"
            continue
        missing = object()
        assert OmegaConf.select(cfg, key, default=missing) is not missing, f"{name}: {key} is not a config key"
        for v in values:  # each value (choices, interval ends) composes and passes validation
            job = compose(f"sweep={name}", f"{key}={v}")
            validate(job)

    sweeper = cfg.hydra.sweeper
    if "optuna" in sweeper._target_.lower():
        from src.sweeps.pruning import make_pruner
        from src.sweeps.space import search_space
        from src.sweeps.sweeper import make_sampler

        space, fixed, _ = search_space(params)
        assert set(space) == set(params) and not fixed  # all swept, each a valid Optuna distribution
        resolved = OmegaConf.to_container(sweeper, resolve=True)
        assert resolved["study_name"] == name
        assert resolved["storage"] == f"sqlite:///outputs/optuna/{name}.db"
        assert resolved["n_jobs"] == 1 and 0 < resolved["max_failure_rate"] <= 1.0
        assert resolved["sampler"]["seed"] is None  # shared studies: no fixed seed
        directions = sweeper.direction if OmegaConf.is_list(sweeper.direction) else [sweeper.direction]
        objectives = list(cfg.sweep.objectives)
        assert len(directions) == len(objectives) and set(objectives) <= set(RESULT_KEYS)
        make_sampler(sweeper.sampler)
        make_pruner(cfg)


# The searched values each Optuna sweep file is meant to search: a change of syntax or of the plugin's
# parser (range() excludes its stop under the 1.4 plugin, included it under 1.3) must not move them.
INTENDED_SPACES = {
    "csrae_optuna": {
        "prior.K": ("int", 1, 50, False),
        "model.reg_weight": ("float", 0.01, 100.0, True),
        "model.latent_dim": ("int", 2, 64, False),
        "optimizer.lr": ("float", 0.0001, 0.01, True),
    },
    "csrae_nsga2": {
        "model.reg_weight": ("float", 0.01, 100.0, True),
        "model.latent_dim": ("int", 2, 64, False),
        "optimizer.lr": ("float", 0.0001, 0.01, True),
        "prior.weights": ("choice", "uniform", "learned"),
        "prior.init": ("choice", "random", "kmeans"),
    },
}
INTENDED_SPACES["vae_optuna"] = INTENDED_SPACES["csrae_optuna"]
INTENDED_SPACES["csrae_lambda"] = {"model.reg_weight": ("float", 0.5, 20.0, True)}


@pytest.mark.parametrize("name", sorted(INTENDED_SPACES))
def test_each_optuna_sweep_searches_the_intended_values(name):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from src.sweeps.space import search_space

    space, _, _ = search_space(compose(f"sweep={name}").hydra.sweeper.params)
    assert set(space) == set(INTENDED_SPACES[name])
    for key, (kind, *want) in INTENDED_SPACES[name].items():
        d = space[key]
        if kind == "choice":
            assert isinstance(d, CategoricalDistribution) and list(d.choices) == want, (key, d)
        else:
            assert isinstance(d, IntDistribution if kind == "int" else FloatDistribution), (key, d)
            assert (d.low, d.high, d.log) == tuple(want), (key, d)
            assert kind == "float" or d.step == 1


def test_range_stops_before_its_end_in_an_optuna_search_space():
    """range(1, 5) searches 1..4 (Python's and Hydra's grid reading); int(interval(1, 5)) includes 5."""
    from src.sweeps.space import search_space

    space, _, _ = search_space({"prior.K": "range(1,5)", "model.latent_dim": "int(interval(1, 5))"})
    assert (space["prior.K"].low, space["prior.K"].high) == (1, 4)
    assert (space["model.latent_dim"].low, space["model.latent_dim"].high) == (1, 5)


def test_sweep_cli_creates_and_shows_a_study(tmp_path, capsys):
    from src.sweeps.cli import main

    storage = f"hydra.sweeper.storage=sqlite:///{tmp_path / 'cli' / 'optuna.db'}"
    for command in ("create", "show"):
        assert main([command, "sweep=csrae_nsga2", storage]) == 0
        assert "study csrae_nsga2: no trials yet" in capsys.readouterr().out
    study = load_study(tmp_path / "cli", "csrae_nsga2")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert main(["show", "sweep=csrae_optuna", storage]) == 2  # no such study yet: one line, exit 2
    assert "no study 'csrae_optuna'" in capsys.readouterr().err


# --- small pieces -------------------------------------------------------------------------------


def test_objective_raises_instead_of_returning_nan(tmp_path):
    from src.sweeps.jobs import ObjectiveError, objective

    cfg = OmegaConf.create({"sweep": {"objectives": ["val_nll", "val_acc"]}})
    (tmp_path / "results.json").write_text(json.dumps({"val_nll": 30.0, "val_acc": 0.5}))
    assert objective(cfg, tmp_path, 30.0) == [30.0, 0.5]
    for bad in (None, float("nan")):
        (tmp_path / "results.json").write_text(json.dumps({"val_nll": 30.0, "val_acc": bad}))
        with pytest.raises(ObjectiveError, match="val_acc"):
            objective(cfg, tmp_path, 30.0)
    assert objective(OmegaConf.create({"sweep": {"objectives": ["val_nll"]}}), tmp_path, 12.5) == 12.5


def test_close_stale_completes_finished_jobs_and_fails_the_rest(tmp_path):
    from src.sweeps.storage import ensure_study
    from src.sweeps.trials import close_stale

    study = ensure_study(f"sqlite:///{tmp_path / 'stale.db'}", "s", ["minimize"])
    for job in (0, 1):
        t = study.ask()
        t.set_user_attr("sweep_dir", str(tmp_path))
        t.set_user_attr("job_num", job)
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "results.json").write_text(json.dumps({"status": "completed", "trial": 0, "val_nll": 7.5}))
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "results.json").write_text(json.dumps({"status": "running", "trial": 1, "val_nll": None}))
    # Asked in this test, so no sweep process is recorded on them: closed only with force=True.
    assert close_stale(study, older_than_min=0)["unverified"] == [0, 1]
    assert close_stale(study, older_than_min=60, force=True)["fail"] == []  # too recent: left alone
    assert close_stale(study, older_than_min=0, force=True) == {
        "complete": [0],
        "fail": [1],
        "alive": [],
        "unverified": [],
    }
    assert study.trials[0].value == 7.5 and study.trials[1].state.name == "FAIL"


def test_sweep_dir_is_claimed_once(tmp_path):
    from src.sweeps.sweeper import SweepDirInUse, claim_sweep_dir

    claim_sweep_dir(tmp_path / "s")
    with pytest.raises(SweepDirInUse, match="fresh hydra.sweep.dir"):
        claim_sweep_dir(tmp_path / "s")


def test_parallel_trials_and_job_threads():
    from src.resolvers import cpu_count, parallel_trials
    from src.sweeps.jobs import job_threads

    assert parallel_trials(1) == 1 and parallel_trials(4) == 4 and parallel_trials(None) == 1
    assert parallel_trials(-1) == cpu_count()
    hc = OmegaConf.create(
        {"launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}}
    )
    assert job_threads(0, hc) == max(1, cpu_count() // 2)
    assert job_threads(1, hc) is None
    basic = OmegaConf.create({"launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}})
    assert job_threads(0, basic) is None


def test_a_run_imports_no_optuna():
    """src.run imports src.sweeps.jobs only: a single run or a job does not load Optuna or the sweeper."""
    code = (
        "import json, src.run, sys; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('optuna', 'src.sweeps')))))"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout) == ["src.sweeps", "src.sweeps.jobs"]


def test_hydra_discovers_the_projects_sweeper():
    """The sweep files name hydra_plugins.csrae_sweeps' sweeper; Hydra finds it in its plugin registry
    (entry point and namespace package), with no callback or import needed first."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    known = {f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Sweeper)}
    for name in ("vae_optuna", "csrae_optuna", "csrae_nsga2"):
        assert compose(f"sweep={name}").hydra.sweeper._target_ in known


def test_journal_file_study_runs_and_the_shell_reads_it(tmp_path, capsys):
    """hydra.sweeper.storage=PATH (not a URL): an Optuna journal file, written by the sweep and read by
    `python -m src.sweeps show` and optuna itself."""
    import optuna

    from src.sweeps.cli import main
    from src.sweeps.storage import open_storage

    journal = tmp_path / "studies" / "vae.log"
    sweep(
        tmp_path,
        "sweep=vae_optuna",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage={journal}",
        f"hydra.sweep.dir={tmp_path / 'j'}",
    )
    study = optuna.load_study(study_name="vae_optuna", storage=open_storage(str(journal)))
    assert states(study) == {"COMPLETE": 2} and study.metric_names == ["val_nll"]
    assert journal.is_file() and not list(tmp_path.glob("**/*.db"))
    assert len(pd.read_csv(tmp_path / "j" / "trials.csv")) == 2
    assert main(["show", "sweep=vae_optuna", f"hydra.sweeper.storage={journal}"]) == 0
    assert "study vae_optuna: 2 complete" in capsys.readouterr().out


def test_a_study_made_by_optuna_2_10_is_upgraded_with_every_trial_kept(tmp_path):
    import shutil

    old = tmp_path / "optuna.db"
    shutil.copy(REPO / "tests" / "fixtures" / "optuna210_study.db", old)
    p = sweep(tmp_path, *optuna_args(tmp_path, "csrae_optuna", "new", 1), "pruner=none")
    lines = [ln for ln in p.stderr.splitlines() if "upgrading" in ln]
    assert len(lines) == 1 and str(old) in lines[0] and "one way" in lines[0], p.stderr[-3000:]
    backup = tmp_path / "optuna.db.schema-v2.6.0.a.bak"
    assert backup.is_file() and backup.read_bytes() == (REPO / "tests/fixtures/optuna210_study.db").read_bytes()
    study = load_study(tmp_path, "csrae_optuna")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3 + ["FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[1].value == pytest.approx(22.388404293218485)
    assert study.trials[0].user_attrs["sweep_dir"] == "outputs/multirun/old"
    again = sweep(tmp_path, *optuna_args(tmp_path, "csrae_optuna", "again", 1), "pruner=none")
    assert "upgrading" not in again.stderr  # once
