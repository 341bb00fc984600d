"""Pruning inside Hydra sweeps: jobs report interim validation NLLs to their Optuna trial, a pruner stops
them, the study records PRUNED; refusals; a storage failure while reporting; workers sharing one budget.

End-to-end runs are `python -m src.run -m sweep=...` subprocesses on digits (helpers in test_sweeps).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
from cli import subprocess_env
from helpers import REPO, TINY
from test_sweeps import _command, load_study, optuna_args, results, states, sweep


def _epochs_trained(sweep_dir: Path) -> int:
    return sum(results(d)["epochs_run"] or 0 for d in sweep_dir.iterdir() if (d / "results.json").exists())


def test_hyperband_sweep_prunes_trials_and_trains_at_most_three_quarters_of_the_epochs(tmp_path):
    """The pruning issue's acceptance run: 12 trials × 30 epochs on digits with hyperband."""
    p = sweep(
        tmp_path,
        *optuna_args(tmp_path, "csrae_optuna", "hb", 12),
        "pruner=hyperband",
        "hydra.sweeper.sampler.seed=0",
        "trainer.checkpoint=false",  # nothing here resumes; saving a checkpoint every epoch is ~15% of a trial
        epochs=30,
        timeout=1800,
    )
    study = load_study(tmp_path, "csrae_optuna")
    got = states(study)
    assert got.get("PRUNED", 0) >= 1 and got.get("FAIL", 0) == 0, got
    assert all(t.intermediate_values for t in study.trials), "every trial reports interim values"
    for t in study.trials:
        r = results(tmp_path / "hb" / str(t.user_attrs["job_num"]))
        assert r["status"] == ("pruned" if t.state.name == "PRUNED" else "completed"), (t.number, r["status"])
        if t.state.name == "PRUNED":
            last = max(t.intermediate_values)
            assert r["epochs_run"] == last < 30 and r["interim_val_nll"] == t.intermediate_values[last]
            assert r["val_nll"] is None and r["test_nll"] is None  # no final evaluation
    trained = _epochs_trained(tmp_path / "hb")
    assert trained <= 0.75 * 12 * 30, trained
    table = pd.read_csv(tmp_path / "hb" / "trials.csv")
    assert set(table.loc[table["state"] == "PRUNED", "run_status"]) == {"pruned"}
    assert "pruned" in p.stdout + p.stderr

    # the report counts pruned trials apart and never compares them
    out = subprocess.run(
        [sys.executable, "-m", "src.report", str(tmp_path / "hb"), "--out", str(tmp_path / "rep"), "--quiet"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(pruned): stopped by the study's pruner after epoch" in out.stderr
    md = next((tmp_path / "rep").glob("*/report.md")).read_text()
    assert f"{got['PRUNED']} pruned" in md


def test_interim_values_compare_across_lambda(tmp_path):
    """Two trials differing only in λ (1 and 10): the interim value each reports estimates its final
    val_nll (within 10%, and closer than its validation loss, whose scale moves with λ), so the two
    trials' interim values compare as their objectives do."""
    fixed = ["prior.K=5", "model.latent_dim=8", "optimizer.lr=0.003", "trainer.warmup_epochs=0", "pruner=none"]
    for lam in (1, 10):
        sweep(
            tmp_path,
            *optuna_args(tmp_path, "csrae_optuna", f"lam{lam}", 1),
            *fixed,
            f"model.reg_weight={lam}",
            "eval.is_samples=200",
            epochs=3,
        )
    study = load_study(tmp_path, "csrae_optuna")
    assert states(study) == {"COMPLETE": 2}
    for lam, t in zip((1, 10), study.trials):
        job = tmp_path / f"lam{lam}" / "0"
        assert sorted(t.intermediate_values) == [1, 2, 3]  # one report per epoch
        interim = t.intermediate_values[3]
        val_nll = results(job)["val_nll"]
        val_loss = pd.read_csv(job / "metrics.csv")["val_loss"].iloc[-1]
        assert abs(interim - val_nll) < 0.1 * val_nll, (lam, interim, val_nll)
        if lam == 10:  # λ times the regulariser: the loss is not on the objective's scale
            assert abs(val_loss - val_nll) > 2 * abs(interim - val_nll), (val_loss, interim, val_nll)


def test_each_pruner_builds_and_its_first_rung_is_the_end_of_the_warm_up():
    import optuna

    from src.config import compose_config
    from src.sweeps.pruning import make_pruner, prunes

    kinds = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }
    for name, kind in kinds.items():
        cfg = compose_config("sweep=csrae_optuna", f"pruner={name}", "trainer.warmup_epochs=7")
        assert isinstance(make_pruner(cfg), kind) and prunes(cfg) == (name != "none")
    hb = compose_config("sweep=csrae_optuna", "trainer.warmup_epochs=7", "trainer.epochs=40").pruner
    assert (hb.min_resource, hb.max_resource) == (7, 40)
    assert compose_config("sweep=csrae_optuna", "trainer.warmup_epochs=0").pruner.min_resource == 1
    assert compose_config("sweep=csrae_optuna", "pruner=median", "trainer.warmup_epochs=7").pruner.n_warmup_steps == 7
    assert isinstance(make_pruner(compose_config()), optuna.pruners.NopPruner)  # no pruner selected


def test_pruner_on_a_multi_objective_sweep_is_refused_and_trains_nothing(tmp_path):
    p = sweep(tmp_path, *optuna_args(tmp_path, "csrae_nsga2", "mo", 2), "pruner=hyperband", check=False)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        "error: pruner=hyperband: Optuna cannot prune a multi-objective study; use pruner=none"
    ]
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "mo").exists()


def test_pruner_outside_an_optuna_sweep_is_refused(tmp_path):
    for args in (["pruner=median"], ["-m", "model=vae,csrae", "pruner=median"]):
        p = subprocess.run(
            [sys.executable, "-m", "src.run", *args, *TINY, f"hydra.run.dir={tmp_path / 'run'}"]
            + [f"hydra.sweep.dir={tmp_path / 'grid'}"],
            cwd=REPO,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 2, p.stderr[-2000:]
        assert p.stderr.strip().splitlines() == [
            "error: pruner=median: pruning needs an Optuna sweep (sweep=NAME of an Optuna sweep file); "
            "remove pruner=..."
        ], p.stderr
        assert not (tmp_path / "run").exists() and not (tmp_path / "grid").exists()


def test_a_job_outside_an_optuna_sweep_reports_nothing(tmp_path):
    """A grid job has no trial: no reporter, and its run is never pruned."""
    sweep(tmp_path, "model=vae,csrae", f"hydra.sweep.dir={tmp_path / 'grid'}")
    for job in ("0", "1"):
        r = results(tmp_path / "grid" / job)
        assert r["status"] == "completed" and r["trial"] is None and r["interim_val_nll"] is None


def test_a_storage_failure_while_reporting_warns_once_and_training_goes_on(tmp_path, caplog):
    import optuna

    from src.sweeps.pruning import TrialReporter

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, pruner=optuna.pruners.MedianPruner())
    trial = study.ask()
    reporter = TrialReporter(optuna.trial.Trial(study, trial._trial_id), every=1, storage=storage)
    assert reporter.report(1, 10.0) is False and study.trials[0].intermediate_values == {1: 10.0}
    with open(tmp_path / "study.db", "r+b") as f:  # the database file is destroyed under the job
        f.write(b"\0" * 4096)
    with caplog.at_level("WARNING"):
        assert reporter.report(2, 9.0) is False
        assert not reporter.due(3)  # the job trains on without reporting
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith("pruning off for the rest of this job: study storage")


def test_two_workers_on_one_study_finish_exactly_its_budget(tmp_path):
    """budget=study: two sweep processes, each its own sweep dir, share n_trials=5."""
    common = [
        "sweep=vae_optuna",
        "hydra.sweeper.n_trials=5",
        "hydra.sweeper.budget=study",
        "pruner=none",
        f"hydra.sweeper.storage={tmp_path / 'study.log'}",  # a journal file: no database server
    ]
    create = subprocess.run(
        [sys.executable, "-m", "src.sweeps", "create", *common[:1], common[-1]],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert create.returncode == 0, create.stderr
    workers = [
        subprocess.Popen(
            _command(*common, f"hydra.sweep.dir={tmp_path / f'w{i}'}"),
            cwd=tmp_path,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [w.communicate(timeout=1800)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), [o[-3000:] for o in outs]
    import optuna

    from src.sweeps.storage import open_storage

    study = optuna.load_study(study_name="vae_optuna", storage=open_storage(str(tmp_path / "study.log")))
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 5, states(study)
    assert not [t for t in study.trials if t.state.name == "FAIL" and not t.user_attrs.get("over_budget")]
    jobs = [d for w in ("w0", "w1") for d in (tmp_path / w).iterdir() if (d / "results.json").exists()]
    assert len(jobs) == 5 and {json.loads((d / "results.json").read_text())["status"] for d in jobs} == {"completed"}
    # a rerun on the spent budget trains nothing
    again = sweep(tmp_path, *common, f"hydra.sweep.dir={tmp_path / 'w2'}")
    assert "study budget of 5 trials reached" in again.stdout + again.stderr
    assert not any(d.is_dir() and d.name.isdigit() for d in (tmp_path / "w2").iterdir())
