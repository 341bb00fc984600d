"""Hostile but realistic use of single runs and run directories: one test per case.

The cases are grouped by the promise they check (the `# === NAME ===` sections below):

- WRONG NUMBERS: every number a run prints or records belongs to the command that printed it, with the
  caveat it needs (never another run's checkpoint, never a contradictory results.json, strict JSON only).
- LOST DATA: nothing a user already has is overwritten, and a refused run changes nothing in its run
  directory or in any other run's (`snapshot` compares every file, .hydra/ and run.log included).
- ONE-LINE ERRORS: a user mistake ends with one `error: ...` line on stderr, exit code 2 and no
  traceback, before any work. Add a case to ONE_LINE (overrides, words the line must contain) or, when
  it needs files, write a test next to the IDX ones.
- FLUSHED TO DISK: every write-then-rename is flushed, file and directory (`WriteLog` records them).
- DISK FULL: on a real small file system (`small_disk`, a tmpfs of its own, filled by `fill_disk`): one
  line, results.json `failed` with the reason, no temporary file left behind.
- OPTIONAL PARTS: trackers, the native library, downloads. Settings that cannot work are refused in one
  line up front; a part that breaks later is dropped with one warning; nothing waits without end.
- READ-ONLY RUN DIRS: `read_only_run`, an archive or a colleague's share.
- SAID ONCE, IN PLAIN TEXT: what a run does is said once, and a redirected log holds no colour codes.

To add a case: put it in its group, run it once against the code before your fix and see it fail,
and keep it quick (digits, one thread, a few epochs; `tiny_run` below gives a finished run to copy).
A case that needs root (mounting a file system) skips elsewhere, saying why. The native library cases
build in a cache dir of their own (CSRAE_CACHE_DIR), never in the user's.
"""

from __future__ import annotations

import csv
import errno
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import cli_command, make_finished_run, read_results

QUICK = ["trainer.epochs=2", "prior.K=3"]


def lines_of(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    lines = lines_of(proc)
    assert proc.returncode == 2, (proc.returncode, lines)
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert all(w in lines[0] for w in words), (words, lines[0])
    return lines[0]


def assert_ends_in_one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """For commands that log their progress on stderr (python -m src.evaluate): the progress, then one
    `error: ...` line, exit 2, no traceback."""
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    lines = lines_of(proc)
    assert proc.returncode == 2, (proc.returncode, lines)
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], lines
    assert all(w in lines[-1] for w in words), (words, lines[-1])
    return lines[-1]


def epochs_in_metrics(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run dir (the lock file aside: its content is the last holder's pid)."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cli_env) -> Path:
    """A finished two-epoch run (csrae + gmm K=3 on digits), to copy."""
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    return make_finished_run(run_dir, QUICK, cwd=tmp_path_factory.mktemp("cwd"), env=cli_env)


@pytest.fixture
def finished(tiny_run, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    return run_dir


# === WRONG NUMBERS ===================================================================================


def test_restart_with_resume_false_is_refused_not_scored_with_the_old_best(finished, run_cli):
    """Case 1: the issue's command printed the first run's test NLL as the new run's."""
    before = snapshot(finished)
    proc = run_cli(finished, *QUICK, "optimizer.lr=0.01", "trainer.resume=false", "trainer.checkpoint=false")
    assert_one_line_error(proc, "already holds a run", "checkpoints/best.pt", "trainer.resume=false")
    assert "test NLL" not in proc.stdout
    assert snapshot(finished) == before


def test_a_best_checkpoint_of_another_configuration_is_refused(finished, run_cli):
    """Case 1: every checkpoint that is loaded is checked, best.pt too (not only last.pt)."""
    best = finished / "checkpoints" / "best.pt"
    ckpt = torch.load(best, weights_only=True)
    ckpt["fingerprint"] = "another configuration"
    torch.save(ckpt, best)
    before = snapshot(finished)
    proc = run_cli(finished, *QUICK)
    assert_one_line_error(proc, str(best), "different configuration")
    assert snapshot(finished) == before


def test_a_shorter_resume_is_refused(finished, run_cli):
    """results.json said epochs=1 for a model trained 2 epochs (epochs vs epochs_run)."""
    before = snapshot(finished)
    proc = run_cli(finished, "trainer.epochs=1", "prior.K=3")
    assert_one_line_error(proc, "already trained 2 epochs", "trainer.epochs=1")
    assert snapshot(finished) == before


def test_rerun_over_a_run_without_checkpoints_is_refused(tmp_path, run_cli):
    """With trainer.checkpoint=false there is no last.pt to compare: another configuration is still
    refused, so the finished run's results.json and metrics.csv stay as they are."""
    run_dir = tmp_path / "run"
    assert run_cli(run_dir, *QUICK, "trainer.checkpoint=false").returncode == 0
    before = snapshot(run_dir)
    proc = run_cli(run_dir, *QUICK, "trainer.checkpoint=false", "optimizer.lr=0.002")
    assert_one_line_error(proc, "already holds a run", "metrics.csv with 2 epoch(s)", "results.json (completed)")
    assert snapshot(run_dir) == before


def test_resume_without_checkpoints_does_not_score_an_older_best(finished, run_cli):
    """Extending a run with trainer.checkpoint=false: best.pt holds epoch 2 while the best epoch is
    later; the evaluation used epoch 2's weights under the later best_epoch."""
    proc = run_cli(finished, "trainer.epochs=5", "prior.K=3", "trainer.checkpoint=false")
    assert proc.returncode == 0, proc.stderr
    r = read_results(finished)
    assert r["best_epoch"] > 2  # digits keeps improving over the first epochs (deterministic, seed 0)
    assert f"holds epoch 2, not the best epoch {r['best_epoch']}" in proc.stdout


def test_results_json_is_strict_json(compose, tmp_path, monkeypatch):
    """A non-finite metric was written as a bare NaN / Infinity, which strict JSON readers reject."""
    from src import evaluate
    from src.pipeline import run_experiment

    monkeypatch.setattr(evaluate, "loss_terms_mean", lambda *a, **k: (math.inf, math.nan))
    run_experiment(compose(*QUICK), tmp_path)

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    r = json.loads((tmp_path / "results.json").read_text(), parse_constant=refuse)
    assert r["status"] == "completed" and r["test_recon"] is None and r["test_reg"] is None
    assert r["non_finite"] == {"test_recon": "inf", "test_reg": "nan"}
    assert math.isfinite(r["test_nll"])


def test_the_headline_carries_the_many_to_one_caveat_of_the_report():
    """K=500 on ten classes printed "ACC 0.860 (many_to_one)" beside ARI 0.046, without the caveat the
    report gives the same number."""
    import pandas as pd

    from src import analysis as A
    from src.formatting import MANY_TO_ONE, headline

    record = {"test_nll": 90.1, "test_nll_sem": 0.2, "is_samples": 10, "val_nll": 90.3, "K": 500}
    over = headline({**record, "acc": 0.86, "acc_mapping": "many_to_one", "nmi": 0.31, "ari": 0.046})
    assert "ACC 0.860 (K=500 components, more than the classes: " + MANY_TO_ONE + ")" in over, over
    matched = headline({**record, "K": 10, "acc": 0.7, "acc_mapping": "hungarian", "nmi": 0.6, "ari": 0.5})
    assert "ACC 0.700 (hungarian)" in matched and MANY_TO_ONE not in matched
    run = {**record, "status": "completed", "model": "csrae", "acc": 0.86, "acc_mapping": "many_to_one"}
    run.update(best_epoch=3, epochs_run=5, stopped_early=False, n_clusters_used=480)
    notes = A.caveats(pd.DataFrame([run]), pd.DataFrame({"n_runs": [1]}))
    assert any(MANY_TO_ONE in note for note in notes), notes  # the report's caveat is the same text


def test_a_nested_non_finite_value_keeps_the_real_error(compose, tmp_path):
    """`-m 'optimizer.lr=1e-3,inf'`: the sweep's params ({"optimizer.lr": inf}) are nested in the record,
    so writing the failed record raised "Out of range float values are not JSON compliant" instead of
    the one-line config error, and left a partial results.json.tmp behind."""
    from src.config import ConfigError
    from src.pipeline import run_experiment

    with pytest.raises(ConfigError, match="optimizer.lr"):
        run_experiment(compose(*QUICK, "optimizer.lr=inf"), tmp_path, {"params": {"optimizer.lr": math.inf}})

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    r = json.loads((tmp_path / "results.json").read_text(), parse_constant=refuse)
    assert r["status"] == "failed" and r["params"] == {"optimizer.lr": None}
    assert r["non_finite"]["params.optimizer.lr"] == "inf"
    assert not (tmp_path / "results.json.tmp").exists()


# === LOST DATA =======================================================================================


def test_a_second_process_on_the_same_run_dir_is_refused(tmp_path, run_cli, cli_env):
    """Case 4: two processes on one run dir ended with a traceback and duplicate epochs."""
    run_dir = tmp_path / "run"
    cmd = cli_command(run_dir, ["trainer.epochs=12", "prior.K=3"])
    first = subprocess.Popen(
        cmd, cwd=run_cli.cwd, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.pt").exists():
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended or never started"
            time.sleep(0.05)
        second = run_cli(run_dir, "trainer.epochs=12", "prior.K=3")
        assert_one_line_error(second, "in use by another process", f"pid {first.pid}")
        assert first.wait(timeout=300) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
        first.stderr.close()
    assert read_results(run_dir)["status"] == "completed"
    assert epochs_in_metrics(run_dir) == list(range(1, 13))


def test_two_runs_started_in_the_same_second_both_run_in_their_own_dirs(tmp_path, run_cli, cli_env):
    """Two runs into the default `outputs/runs/${now:...}` dir in the same second: the second's Hydra
    rewrote the first run's .hydra/ and run.log before it was refused, so the finished run contradicted
    its own results.json. `${now:%Y}` makes "the same second" certain; the space checks
    that the dir is handed to Hydra intact."""
    template = tmp_path / "my runs" / "${now:%Y}"
    procs = [
        subprocess.Popen(
            cli_command(template, [*QUICK, f"trainer.seed={seed}"]),
            cwd=run_cli.cwd,
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (0, 1)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    year = time.strftime("%Y")
    dirs = sorted((tmp_path / "my runs").iterdir())
    assert [d.name for d in dirs] == [year, f"{year}_2"]
    seeds = set()
    for d in dirs:
        config = (d / ".hydra" / "config.yaml").read_text()
        seed = read_results(d)["seed"]
        assert f"trainer.seed={seed}" in (d / ".hydra" / "overrides.yaml").read_text()
        assert f"\n  seed: {seed}\n" in config
        assert sum(f"done: {d}  " in out for out, _ in outputs) == 1
        seeds.add(seed)
    assert seeds == {0, 1}


def test_a_killed_run_leaves_no_stale_lock(tmp_path, run_cli, cli_env):
    """The lock dies with its process: after SIGKILL the same command resumes."""
    run_dir = tmp_path / "run"
    # 10 epochs: time to kill it after its first checkpoint, few for the resume to train.
    cmd = cli_command(run_dir, ["trainer.epochs=10", "prior.K=3"])
    p = subprocess.Popen(cmd, cwd=run_cli.cwd, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.pt").exists():
            assert p.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert (run_dir / ".lock").exists()
    proc = run_cli(run_dir, "trainer.epochs=10", "prior.K=3")
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout


def test_a_failed_restart_does_not_spoil_the_original_run(finished, run_cli):
    """Case 5: a resume=false restart that failed, then the original command, reported "completed"
    with an empty metrics.csv (the restart had truncated it; last.pt was the old run's)."""
    reference = read_results(finished)
    run_cli(finished, *QUICK, "trainer.resume=false", "optimizer.lr=1e6")  # refused now; failed at step 1 before
    proc = run_cli(finished, *QUICK)
    assert proc.returncode == 0, proc.stderr
    r = read_results(finished)
    assert epochs_in_metrics(finished) == [1, 2]
    assert (r["status"], r["epochs_run"], r["test_nll"]) == ("completed", 2, reference["test_nll"])


@pytest.mark.parametrize("extra", [[], ["tags=[a,b]"]], ids=["plain", "list-valued override"])
def test_a_refused_resume_changes_nothing_in_the_run_dir(finished, run_cli, extra):
    """Case 7: Hydra rewrote .hydra/ (and appended to run.log) before the refusal; with a comma in a
    list value (`tags=[a,b]`) the early check was skipped and it still did."""
    before = snapshot(finished)
    assert ".hydra/config.yaml" in before and "run.log" in before
    proc = run_cli(finished, *QUICK, "optimizer.lr=0.01", *extra)
    assert_one_line_error(proc, "different configuration", "last.pt")
    assert snapshot(finished) == before


def test_a_refused_resume_names_the_keys_that_differ_and_both_values(finished, run_cli):
    """The refusal said "a different configuration (model, prior, ...)" but not which key differed."""
    proc = run_cli(finished, *QUICK, "optimizer.lr=0.01", "trainer.batch_size=64", "model.hidden_dims=[32]")
    line = assert_one_line_error(proc, "different configuration", "last.pt")
    assert "optimizer.lr=0.01 (the checkpoint has 0.0005)" in line, line
    assert "trainer.batch_size=64 (the checkpoint has 100)" in line, line
    assert "model.hidden_dims=[32] (the checkpoint has none)" in line, line
    assert "prior." not in line and "dataset." not in line  # only what differs


def test_a_refused_resume_into_an_interpolated_run_dir_changes_nothing(tiny_run, tmp_path, run_cli):
    """`hydra.run.dir=runs/K${prior.K}`: the early check skipped every interpolated dir, so Hydra
    rewrote the finished run's .hydra/ before the refusal."""
    shutil.copytree(tiny_run, tmp_path / "K3")
    before = snapshot(tmp_path / "K3")
    proc = run_cli(tmp_path / "K${prior.K}", *QUICK, "optimizer.lr=0.01")
    assert_one_line_error(proc, "different configuration", "last.pt")
    assert snapshot(tmp_path / "K3") == before


@pytest.mark.parametrize("marker", ["job dir", "multirun.yaml"])
def test_a_single_run_into_a_sweep_dir_is_refused(tiny_run, tmp_path, run_cli, marker):
    """A run's results.json on top of a sweep dir made the report read one run instead of the sweep."""
    sweep = tmp_path / "sweep"
    if marker == "job dir":
        shutil.copytree(tiny_run, sweep / "0")
    else:
        sweep.mkdir()
        (sweep / "multirun.yaml").write_text("hydra: {}\n")
    before = snapshot(sweep)
    assert_one_line_error(run_cli(sweep, *QUICK), "already holds a run", "a sweep")
    assert snapshot(sweep) == before


def test_an_unreadable_metrics_csv_gives_one_line(tmp_path, run_cli):
    """Binary garbage in metrics.csv ended in a UnicodeDecodeError traceback."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_bytes(bytes(range(128, 256)) * 16)
    assert_one_line_error(run_cli(run_dir, *QUICK), "metrics.csv (unreadable")


def test_a_refused_start_in_the_python_api_writes_nothing(tiny_run, compose, tmp_path):
    """Through run_experiment(cfg, dir) with trainer.resume=false: a directory holding only another
    run's checkpoints was trained over (its checkpoints replaced, nothing said)."""
    from src.errors import UserError
    from src.pipeline import run_experiment

    shutil.copytree(tiny_run / "checkpoints", tmp_path / "checkpoints")
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="already holds a run"):
        run_experiment(compose(*QUICK, "trainer.resume=false"), tmp_path)
    assert snapshot(tmp_path) == before


def test_the_python_entry_types_a_dataclass_like_the_command_line(tmp_path):
    """run_experiment(Config(...)) with names as plain strings runs, and a wrong type is one ConfigError
    line: the schema types the dataclass, as composition types the command line's config."""
    from src.config import ConfigError
    from src.pipeline import run_experiment
    from src.schema import Config, DatasetConfig, EvalConfig, PriorConfig, TrainerConfig

    with pytest.raises(ConfigError, match="'abc'") as e:
        run_experiment(Config(prior=PriorConfig(K="abc")), tmp_path / "bad")
    assert "\n" not in str(e.value) and not (tmp_path / "bad").exists()
    cfg = Config(
        prior=PriorConfig(name="gmm", K=3),
        dataset=DatasetConfig(name="digits"),
        trainer=TrainerConfig(epochs=1, threads=1, device="cpu", progress=False),
        eval=EvalConfig(is_samples=10, images=False),
    )
    assert math.isfinite(run_experiment(cfg, tmp_path / "ok"))
    r = json.loads((tmp_path / "ok" / "results.json").read_text())
    assert (r["status"], r["dataset"], r["K"]) == ("completed", "digits", 3)


def test_missing_data_on_a_rerun_keeps_the_finished_record(finished, compose, monkeypatch):
    """Rerunning a finished run with a wrong dataset.root (not part of the checkpoint's identity)
    replaced its completed results.json with status failed: the data check came after the
    "running" record was written."""
    from src import pipeline
    from src.data import DataError

    def missing(cfg):
        raise DataError("no MNIST files under /typo")

    monkeypatch.setattr(pipeline, "check_available", missing)
    before = snapshot(finished)
    with pytest.raises(DataError):
        pipeline.run_experiment(compose(*QUICK), finished)
    assert snapshot(finished) == before


def test_a_kill_while_resuming_keeps_the_metrics(finished, monkeypatch):
    """On resume metrics.csv is rewritten (rows of unsaved epochs dropped); it was truncated in
    place, so a kill at that moment lost every row of the run."""
    from src.contract import reset_metrics

    before = (finished / "metrics.csv").read_bytes()

    def killed(self, rows):
        raise KeyboardInterrupt

    monkeypatch.setattr(csv.DictWriter, "writerows", killed)
    with pytest.raises(KeyboardInterrupt):
        reset_metrics(finished / "metrics.csv", keep_through_epoch=2)
    assert (finished / "metrics.csv").read_bytes() == before


# === ONE-LINE ERRORS =================================================================================

ONE_LINE = {
    "val-fraction-0": (["dataset.val_fraction=0"], ["dataset.val_fraction"]),
    "test-fraction-rounds-to-0": (["dataset.test_fraction=0.0001"], ["test"]),
    "huge-seed": ([f"trainer.seed={2**70}"], ["trainer.seed", str(2**70)]),
    "lr-inf": (["optimizer.lr=inf"], ["optimizer.lr", "finite"]),
    "reg-weight-inf": (["model.reg_weight=inf"], ["model.reg_weight", "finite"]),
    "init-scale-nan": (["prior.init_scale=nan"], ["prior.init_scale", "finite"]),
    "huge-threads": ([f"trainer.threads={2**40}"], ["trainer.threads", "CPUs"]),
    "huge-K": ([f"prior.K={10**9}", "prior.init=random"], ["prior.K", "GiB", "memory"]),
    "huge-latent-dim": ([f"model.latent_dim={10**9}"], ["model.latent_dim", "GiB", "memory"]),
    "kmeans-samples-below-K": (
        ["prior.init=kmeans", "prior.kmeans_epoch=1", "prior.kmeans_samples=2", "prior.K=5"],
        ["prior.kmeans_samples", "prior.K"],
    ),
    # Accepted, then the run trained every epoch and died in its evaluation.
    "n-images-0": (["eval.images=true", "eval.n_images=0"], ["eval.n_images", "got 0"]),
    "n-images-huge": (["eval.images=true", f"eval.n_images={10**9}"], ["eval.n_images", str(10**9)]),
    # Optional trackers: their settings are checked up front (docs/CONTRACT.md, "Trackers").
    "mlflow-unknown-scheme": (["logger=mlflow", "logger.tracking_uri=foo://bar"], ["logger.tracking_uri=foo://bar"]),
    "mlflow-no-host": (["logger=mlflow", "logger.tracking_uri=http:/x"], ["logger.tracking_uri=http:/x", "host"]),
    "mlflow-file-store": (["logger=mlflow", "logger.tracking_uri=mlruns"], ["logger.tracking_uri=mlruns"]),
    "mlflow-server-down": (
        ["logger=mlflow", "logger.tracking_uri=http://127.0.0.1:9"],
        ["logger.tracking_uri=http://127.0.0.1:9", "127.0.0.1:9", "logger=none"],
    ),
    "mlflow-database-down-password-masked": (
        ["logger=mlflow", "logger.tracking_uri=postgresql://me:s3cret@127.0.0.1:9/db"],
        ["logger.tracking_uri=postgresql://me:***@127.0.0.1:9/db", "127.0.0.1:9"],
    ),
    "tensorboard-dir-under-a-file": (
        ["logger=tensorboard", "logger.dir=/dev/null/tb"],
        ["logger.dir=/dev/null/tb", "/dev/null", "not a directory"],
    ),
}


@pytest.mark.parametrize("case", list(ONE_LINE))
def test_bad_value_gives_one_line(case, tmp_path, run_cli):
    overrides, words = ONE_LINE[case]
    run_dir = tmp_path / "run"
    assert_one_line_error(run_cli(run_dir, *overrides, "trainer.epochs=2", timeout=120), *words)
    assert not (run_dir / "metrics.csv").exists()  # refused up front, not at step 1


def test_a_refused_evaluation_leaves_no_empty_dir(finished, cli_env, tmp_path):
    """python -m src.evaluate RUN eval.images=true eval.n_images=0 died in evaluation and left an empty
    eval_<tag>/ in the run dir."""
    before = snapshot(finished)
    proc = subprocess.run(
        [sys.executable, "-m", "src.evaluate", str(finished), "eval.images=true", "eval.n_images=0"],
        cwd=tmp_path,
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert_one_line_error(proc, "eval.n_images")
    assert snapshot(finished) == before and not list(finished.glob("eval_*"))


def test_an_interrupted_evaluation_leaves_no_empty_dir(finished, monkeypatch):
    """The pictures' dir was made before the evaluation started, and stayed, empty, when it did not end."""
    from src import evaluate
    from src.finished_runs import reevaluate

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "importance_sampled_nll", interrupted)
    with pytest.raises(KeyboardInterrupt):
        reevaluate(finished, ["eval.images=true", "eval.is_samples=5"])
    assert not list(finished.glob("eval_*"))


@pytest.mark.parametrize(
    "overrides",
    [["dataset.max_train=1"], ["dataset.max_eval=1", "eval.images=true"]],
    ids=["one-training-point", "one-test-point"],
)
def test_the_smallest_splits_still_evaluate(tmp_path, run_cli, overrides):
    """Accepted, trained, then died in evaluation: the few-label classifier with one class
    (max_train=1), the latent picture's PCA of one point (max_eval=1)."""
    run_dir = tmp_path / "run"
    proc = run_cli(run_dir, *QUICK, *overrides)
    assert proc.returncode == 0, proc.stderr
    r = read_results(run_dir)
    assert r["status"] == "completed" and math.isfinite(r["test_nll"])
    assert "non_finite" not in r, r["non_finite"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_gives_one_line(tmp_path, run_cli):
    assert_one_line_error(run_cli(tmp_path / "run", "trainer.device=cuda"), "trainer.device=cuda", "not available")


def test_run_dir_that_is_a_file_gives_one_line(tmp_path, run_cli):
    path = tmp_path / "afile"
    path.write_text("mine")
    assert_one_line_error(run_cli(path), str(path), "not a directory")
    assert path.read_text() == "mine"


def test_empty_last_checkpoint_gives_one_line(finished, run_cli):
    """A 0-byte last.pt gave an IndexError inside the error formatting."""
    (finished / "checkpoints" / "last.pt").write_bytes(b"")
    assert_one_line_error(run_cli(finished, *QUICK), "last.pt", "empty")


def test_unsafe_checkpoint_error_gives_no_unsafe_advice(finished, run_cli):
    """torch's own message advises weights_only=False, i.e. running whatever the file contains."""
    last = finished / "checkpoints" / "last.pt"
    torch.save({"model": {}, "state": {}, "obj": torch.nn.Identity()}, last)
    line = assert_one_line_error(run_cli(finished, *QUICK), str(last), "torch.nn.modules.linear.Identity")
    assert "weights_only=False" not in line and "can still be loaded" not in line and "\x1b" not in line


def test_mistyped_new_key_warns_with_the_close_match(tmp_path, run_cli):
    proc = run_cli(tmp_path / "run", "+trainer.epoch=50")
    assert proc.returncode == 0, proc.stderr
    assert "trainer.epoch is not a configuration key" in proc.stdout and "did you mean trainer.epochs?" in proc.stdout


# --- IDX files (MNIST layout) ------------------------------------------------------------------------


def write_idx(path: Path, magic: int, shape: tuple[int, ...]) -> None:
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in shape)
    path.write_bytes(header + bytes(math.prod(shape)))


def fake_mnist(root: Path, n_train: int = 30, n_train_labels: int = 30, label_magic: int = 0x801) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", 0x803, (n_train, 28, 28))
    write_idx(raw / "train-labels-idx1-ubyte", label_magic, (n_train_labels,))
    write_idx(raw / "t10k-images-idx3-ubyte", 0x803, (10, 28, 28))
    write_idx(raw / "t10k-labels-idx1-ubyte", 0x801, (10,))
    return raw


def test_idx_image_and_label_counts_differ(tmp_path, run_cli):
    raw = fake_mnist(tmp_path / "data", n_train_labels=29)
    line = assert_one_line_error(
        run_cli(tmp_path / "run", "dataset=mnist", f"dataset.root={tmp_path / 'data'}"), "30 images", "29 labels"
    )
    assert str(raw / "train-labels-idx1-ubyte") in line


def test_idx_file_with_a_wrong_magic_number(tmp_path, run_cli):
    raw = fake_mnist(tmp_path / "data", label_magic=0x1F8B0808)  # a gzip archive under the plain name
    assert_one_line_error(
        run_cli(tmp_path / "run", "dataset=mnist", f"dataset.root={tmp_path / 'data'}"),
        str(raw / "train-labels-idx1-ubyte"),
        "magic number is 0x1f8b0808",
        "0x00000801",
        "gunzip",
    )


# === FLUSHED TO DISK =================================================================================


class WriteLog:
    """os.fsync and os.replace, recorded (by path) as the code calls them, then done for real."""

    def __init__(self, monkeypatch):
        import os

        self.events: list[tuple[str, str]] = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            return real_fsync(fd)

        def replace(src, dst, **kw):
            self.events.append(("replace", os.path.realpath(src), os.path.realpath(dst)))
            return real_replace(src, dst, **kw)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)

    def unflushed(self) -> list[str]:
        """Every rename whose file was not fsynced before it, or whose directory was not fsynced after."""
        import os

        bad = []
        for i, event in enumerate(self.events):
            if event[0] != "replace":
                continue
            _, src, dst = event
            if ("fsync", src) not in self.events[:i]:
                bad.append(f"{dst}: file not flushed before the rename")
            if ("fsync", os.path.dirname(dst)) not in self.events[i + 1 :]:
                bad.append(f"{dst}: directory not flushed after the rename")
        return bad

    def renamed(self) -> set[str]:
        return {Path(e[2]).name for e in self.events if e[0] == "replace"}


def test_every_write_then_rename_reaches_the_disk(compose, tmp_path, monkeypatch):
    """Of the write-then-rename writers only results.json called fsync (and none its directory):
    after a power loss last.pt, on which exact resume depends, could be empty though renamed."""
    from src import native
    from src.finished_runs import reevaluate
    from src.pipeline import run_experiment
    from src.report.reportdir import ReportDir

    writes = WriteLog(monkeypatch)
    run_dir = tmp_path / "run"
    run_experiment(compose(*QUICK), run_dir)
    reevaluate(run_dir, ["eval.is_samples=5"])
    ReportDir(tmp_path / "report", run_dir).clear()
    if shutil.which("c++"):
        native._build("c++", tmp_path / "cache" / "lib.so")
    expected = {"results.json", "config.yaml", "metrics.csv", "last.pt", "best.pt", "eval_is_samples=5.json"}
    assert expected | {".csrae_report"} <= writes.renamed()
    assert writes.unflushed() == []
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_stop_during_a_checkpoint_write_waits_for_the_write(tmp_path):
    """SIGTERM (the harness raises KeyboardInterrupt for it) arriving while a checkpoint is written:
    the write completes and is renamed into place, then the stop takes effect. Cut in the middle,
    torch.save fails inside its zip writer with a RuntimeError of its own and the stop becomes a crash."""
    import collections
    import signal

    import torch

    from src.checkpoints import atomic_torch_save

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    class StopWhileWriting:  # pickled by torch.save: sends SIGTERM from inside the write
        def __reduce__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            return (collections.OrderedDict, ())  # a type weights_only loading accepts

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic_torch_save({"weights": torch.ones(100_000), "stop": StopWhileWriting()}, tmp_path / "last.pt")
    finally:
        signal.signal(signal.SIGTERM, previous)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert torch.equal(saved["weights"], torch.ones(100_000)) and saved["stop"] == {}
    assert not list(tmp_path.glob("*.tmp"))


# === DISK FULL =======================================================================================


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs of its own, to fill with `fill_disk` (mounting needs root: skipped otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill ({p.stderr.strip() or 'mount failed'}; needs root)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill_disk(disk: Path) -> None:
    """Fill the file system to its last byte (writes shrink until not even one byte fits)."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        size = 1 << 20
        while size:
            try:
                os.write(fd, bytes(size))
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                size //= 2
    finally:
        os.close(fd)


def test_a_full_disk_fails_the_run_in_one_line_and_records_it(small_disk, cli_env, run_cli):
    """The disk filled up during training: ENOSPC writing best.pt, then again writing the failed record.
    The run ended in a traceback, results.json stayed `running` and best.pt.tmp / results.json.tmp kept
    the disk full."""
    run_dir = small_disk / "run"
    cmd = cli_command(run_dir, ["trainer.epochs=200", "trainer.patience=0", "prior.K=3"])
    proc = subprocess.Popen(
        cmd, cwd=run_cli.cwd, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended or never started"
            time.sleep(0.02)
        fill_disk(small_disk)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    line = assert_one_line_error(done, "No space left on device", str(run_dir))
    r = read_results(run_dir)
    assert r["status"] == "failed" and "No space left on device" in r["error"], r
    assert line == f"error: {r['error']}"
    assert not list(run_dir.rglob("*.tmp"))


def test_a_new_run_dir_without_room_for_its_lock_gives_one_line(tmp_path, run_cli):
    """The default `${now:...}` run dir made, but no inode left for its .lock: a RunDirError traceback."""
    disk = tmp_path / "inodes"
    disk.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,nr_inodes=64", "tmpfs", str(disk)], capture_output=True)
    if p.returncode != 0:
        pytest.skip("cannot mount a small tmpfs (needs root)")
    try:
        (disk / "runs").mkdir()
        for i in itertools.count():  # use up every inode, then free one: the run dir gets it, its .lock none
            try:
                (disk / f"f{i}").touch()
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                (disk / f"f{i - 1}").unlink()
                break
        proc = run_cli(disk / "runs" / "${now:%Y}", *QUICK)
        assert_one_line_error(proc, "No space left on device")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_run_started_on_a_full_disk_fails_in_one_line(small_disk, compose):
    """From Python (or a sweep job) the pid written into the lock file raised a bare OSError."""
    from src.errors import UserError
    from src.pipeline import run_experiment

    fill_disk(small_disk)
    with pytest.raises(UserError, match="No space left on device") as e:
        run_experiment(compose(*QUICK), small_disk / "run")
    assert "\n" not in str(e.value)
    assert not list(small_disk.rglob("*.tmp"))


@pytest.mark.parametrize("torn", ["1", "1,40.5,39", "\x00\x00"], ids=["epoch-only", "short-row", "zeros"])
def test_a_torn_metrics_row_is_dropped_on_resume(finished, run_cli, torn):
    """The last row cut short by a full disk or a crash ("1" of epoch 12's row) was kept on resume as a
    second epoch 1 with empty values; one whose epoch is not a number ended the resume in a traceback."""
    with open(finished / "metrics.csv", "a") as f:
        f.write(torn)
    proc = run_cli(finished, "trainer.epochs=3", "prior.K=3")
    assert proc.returncode == 0, proc.stderr
    assert epochs_in_metrics(finished) == [1, 2, 3]
    with open(finished / "metrics.csv", newline="") as f:
        assert all(None not in row.values() and "" not in row.values() for row in csv.DictReader(f))


def test_a_report_out_dir_that_cannot_be_made_gives_one_line(tiny_run, cli_env, tmp_path):
    """--out under a file: a NotADirectoryError traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "src.report", str(tiny_run), "--out", "/dev/null/reports", "--quiet"],
        cwd=tmp_path,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(proc, "/dev/null/reports")


def test_the_failure_is_recorded_on_a_disk_that_stays_full(small_disk):
    """No room for a temporary copy of results.json: the failed record is written over the `running` one."""
    from src.contract import write_results

    write_results(small_disk, {"status": "running"})
    fill_disk(small_disk)
    write_results(small_disk, {"status": "failed", "error": "cannot write best.pt: No space left on device"})
    r = read_results(small_disk)
    assert (r["status"], r["error"]) == ("failed", "cannot write best.pt: No space left on device")
    assert not list(small_disk.glob("*.tmp"))


def test_a_full_disk_under_the_report_and_the_evaluation_gives_one_line(small_disk, tiny_run, cli_env, tmp_path):
    """`python -m src.report --out` and `python -m src.evaluate` on a full disk: a traceback, and the
    report left its manifest's .tmp behind."""
    run_dir = small_disk / "run"
    shutil.copytree(tiny_run, run_dir)
    fill_disk(small_disk)
    report = subprocess.run(
        [sys.executable, "-m", "src.report", str(tiny_run), "--out", str(small_disk / "reports"), "--quiet"],
        cwd=tmp_path,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(report, "No space left on device", str(small_disk / "reports"))
    before = snapshot(run_dir)
    evaluation = subprocess.run(
        [sys.executable, "-m", "src.evaluate", str(run_dir), "eval.is_samples=5"],
        cwd=tmp_path,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_ends_in_one_error_line(evaluation, "No space left on device", str(run_dir))
    assert snapshot(run_dir) == before
    assert not list(small_disk.rglob("*.tmp"))


# === OPTIONAL PARTS ==================================================================================
# A tracker and the native loops are optional: settings that cannot work are refused up front in one
# line; a part that breaks later is dropped with one warning and the run goes on.


def test_an_unreachable_mlflow_server_fails_fast_and_is_recorded(tmp_path, run_cli):
    """logger.tracking_uri=http://127.0.0.1:9 hung before training: urllib3 retried for minutes."""
    run_dir = tmp_path / "run"
    started = time.monotonic()
    proc = run_cli(run_dir, "logger=mlflow", "logger.tracking_uri=http://127.0.0.1:9", timeout=60)
    assert time.monotonic() - started < 45
    line = assert_one_line_error(proc, "logger.tracking_uri=http://127.0.0.1:9")
    r = read_results(run_dir)
    assert r["status"] == "failed" and line.removeprefix("error: ") in r["error"]
    assert not (run_dir / "metrics.csv").exists()


def test_a_refused_tracker_changes_nothing_in_a_finished_run(finished, run_cli):
    """Resuming with a tracker (or data) that cannot work: the checks came after Hydra had rewritten
    the finished run's .hydra/ and run.log."""
    before = snapshot(finished)
    proc = run_cli(finished, *QUICK, "logger=tensorboard", "logger.dir=/dev/null/tb")
    assert_one_line_error(proc, "logger.dir=/dev/null/tb")
    assert snapshot(finished) == before


DOWNLOAD = """
import socket, sys, threading
server = socket.create_server(("127.0.0.1", 0))  # accepts connections, never answers
threading.Thread(target=lambda: [server.accept() for _ in iter(int, 1)], daemon=True).start()
silent = f"http://127.0.0.1:{server.getsockname()[1]}/"
from torchvision import datasets
datasets.MNIST.mirrors = [silent]
datasets.CIFAR10.url = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # nothing listens: refused
from src import data
from src.config import compose_config
data.DOWNLOAD_TIMEOUT_S = 2
cfg = compose_config(f"dataset={sys.argv[1]}", "dataset.download=true", f"dataset.root={sys.argv[2]}")
try:
    data.load_dataset(cfg.dataset)
except data.DataError as e:
    print(f"error: {e}")
"""


@pytest.mark.parametrize("dataset,why", [("mnist", "timed out"), ("cifar10", "Connection refused")])
def test_a_download_that_fails_ends_in_one_line(tmp_path, cli_env, dataset, why):
    """dataset.download=true: a mirror that takes the connection and then says nothing made the run wait
    forever (no timeout on the download's socket); CIFAR-10 unreachable ended in a URLError traceback."""
    proc = subprocess.run(
        [sys.executable, "-c", DOWNLOAD, dataset, str(tmp_path / "data")],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.startswith(f"error: {dataset}") and why in proc.stdout, proc.stdout


def test_a_missing_tracker_package_gives_one_line(tmp_path, run_cli, cli_env):
    """logger=mlflow without mlflow installed: an ImportError traceback from inside the run."""
    shadow = tmp_path / "shadow" / "mlflow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError(\"No module named 'mlflow'\")\n")
    env = {**cli_env, "PYTHONPATH": f"{shadow.parent}{os.pathsep}{cli_env['PYTHONPATH']}"}
    proc = subprocess.run(
        cli_command(tmp_path / "run", ["logger=mlflow"]), cwd=run_cli.cwd, env=env, capture_output=True, text=True
    )
    assert_one_line_error(proc, "logger=mlflow", "pip install", "logger=none")


def test_a_tracker_that_fails_mid_run_is_dropped_with_one_warning(compose, tmp_path, monkeypatch, caplog):
    """The tracker is a copy: its failure in epoch 2 (a full disk under logger.dir) failed the whole run."""
    from src import trackers
    from src.pipeline import run_experiment

    calls = []

    def failing(self, row):
        calls.append(row["epoch"])
        if row["epoch"] >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trackers.TensorBoardTracker, "log_epoch", failing)
    run_experiment(compose("trainer.epochs=3", "prior.K=3", "logger=tensorboard"), tmp_path)
    assert read_results(tmp_path)["status"] == "completed" and calls == [1, 2]
    warnings = [r.getMessage() for r in caplog.records if "logger=tensorboard" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], warnings


CS_STEP = (
    "import torch; from src import native, divergences as dv; x = torch.randn(3, 4, dtype=torch.float64); "
    "print(float(dv.cs_divergence(x, x, x, x, None).sum()), native.library() is not None)"
)


def damaged_native_cache(tmp_path: Path, cli_env: dict, damage: str) -> tuple[Path, dict]:
    """A cache dir of this test's own (never the user's) whose native library was built, then damaged."""
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler (c++) to build the native loops")
    env = {**cli_env, "CSRAE_CACHE_DIR": str(tmp_path / "cache"), "CXX": "c++"}
    built = subprocess.run([sys.executable, "-c", CS_STEP], env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0 and built.stdout.split()[-1] == "True", built.stderr
    (lib,) = (tmp_path / "cache").glob("*.so")
    if damage == "truncated":  # a partial copy
        lib.write_bytes(lib.read_bytes()[: lib.stat().st_size // 2])
    else:
        for checksum in (tmp_path / "cache").glob("*.sha256"):
            checksum.unlink()
    return lib, env


def native_warnings(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if "native" in line]


@pytest.mark.parametrize("damage", ["truncated", "no checksum"])
def test_a_damaged_native_library_is_rebuilt_with_one_warning(tmp_path, cli_env, damage):
    """A truncated cached library (a partial copy) was loaded as it was: SIGBUS at the first CS step,
    no message, and every later run on the machine died the same way."""
    lib, env = damaged_native_cache(tmp_path, cli_env, damage)
    step = subprocess.run([sys.executable, "-c", CS_STEP], env=env, capture_output=True, text=True, timeout=300)
    assert step.returncode == 0, (step.returncode, step.stderr)
    assert step.stdout.split()[-1] == "True"  # rebuilt and used
    warnings = native_warnings(step)
    assert len(warnings) == 1 and str(lib) in warnings[0] and "rebuilt" in warnings[0], step.stderr
    again = subprocess.run([sys.executable, "-c", CS_STEP], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and native_warnings(again) == [], again.stderr


def test_a_damaged_native_library_without_a_compiler_falls_back_with_one_warning(tmp_path, cli_env):
    lib, env = damaged_native_cache(tmp_path, cli_env, "truncated")
    broken = tmp_path / "bin" / "c++"  # the same compiler name (the cache key), but it cannot build
    broken.parent.mkdir()
    broken.write_text("#!/bin/sh\necho 'c++: cannot build here' >&2\nexit 1\n")
    broken.chmod(0o755)
    env["PATH"] = f"{broken.parent}{os.pathsep}{env['PATH']}"
    step = subprocess.run([sys.executable, "-c", CS_STEP], env=env, capture_output=True, text=True, timeout=300)
    assert step.returncode == 0, (step.returncode, step.stderr)
    value, native_used = step.stdout.split()
    assert math.isfinite(float(value)) and native_used == "False"  # the torch code
    warnings = native_warnings(step)
    assert len(warnings) == 1 and str(lib) in warnings[0] and "torch" in warnings[0], step.stderr


# === READ-ONLY RUN DIRS ==============================================================================


@pytest.fixture
def read_only_run(tiny_run, tmp_path):
    """A finished run in a directory this process cannot write (an archive, a colleague's share): a
    read-only bind mount (root ignores file modes), or the modes taken away when not root."""
    run_dir = tmp_path / "archive" / "run"
    shutil.copytree(tiny_run, run_dir)
    if os.geteuid() != 0:
        for p in [run_dir, *run_dir.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        yield run_dir
        for p in [run_dir, *run_dir.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
        return
    mount = subprocess.run(["mount", "--bind", str(run_dir), str(run_dir)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot bind-mount a read-only run dir ({mount.stderr.strip()})")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(run_dir)], check=True, capture_output=True)
        yield run_dir
    finally:
        subprocess.run(["umount", "-l", str(run_dir)], check=False)


def evaluate_cli(*argv, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "src.evaluate", *map(str, argv)], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_evaluating_a_read_only_run_dir_is_refused_in_one_line(read_only_run, cli_env, tmp_path):
    """An OSError traceback on .lock (src.run already said this in one line)."""
    before = snapshot(read_only_run)
    proc = evaluate_cli(read_only_run, "eval.is_samples=5", env=cli_env, cwd=tmp_path)
    assert_one_line_error(proc, str(read_only_run), "--out")
    assert snapshot(read_only_run) == before


def test_a_read_only_run_dir_is_evaluated_into_another_dir(read_only_run, cli_env, tmp_path):
    out = tmp_path / "evaluations"
    proc = evaluate_cli(read_only_run, "--out", out, "eval.is_samples=5", env=cli_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "eval_is_samples=5.json").read_text())
    assert record["run_dir"] == str(read_only_run) and record["is_samples"] == 5
    assert f"{out / 'eval_is_samples=5.json'}: test NLL" in proc.stdout


def test_run_experiment_into_a_read_only_dir_gives_one_line(read_only_run, compose):
    """From Python (or a sweep job) an OSError from the lock file, where src.run says one line."""
    from src.errors import UserError
    from src.pipeline import run_experiment

    before = snapshot(read_only_run)
    with pytest.raises(UserError, match="cannot use run dir") as e:
        run_experiment(compose(*QUICK), read_only_run)
    assert "\n" not in str(e.value) and str(read_only_run) in str(e.value)
    assert snapshot(read_only_run) == before


# === SAID ONCE, IN PLAIN TEXT ========================================================================

RUN_FROM_PYTHON = (
    "import sys; from src.config import compose_config; from src.pipeline import run_experiment; "
    "run_experiment(compose_config('debug=smoke', 'trainer.device=cpu', 'trainer.progress=false', 'prior.K=3'), "
    "sys.argv[1])"
)


def test_run_experiment_from_python_says_what_it_does(tmp_path, cli_env):
    """From Python (no logging set up) run_experiment printed nothing, and on a finished run dir it
    evaluated the run again and rewrote results.json without a word."""
    run_dir = tmp_path / "run"

    def from_python() -> str:
        p = subprocess.run(
            [sys.executable, "-c", RUN_FROM_PYTHON, str(run_dir)], env=cli_env, capture_output=True, text=True
        )
        assert p.returncode == 0, p.stderr
        assert "\x1b" not in p.stdout + p.stderr
        return p.stderr

    first = from_python()
    assert "epoch 1/1" in first and "evaluating: S=10" in first, first
    again = from_python()
    said = [line for line in again.splitlines() if "nothing left to train" in line]
    assert len(said) == 1 and str(run_dir / "checkpoints" / "last.pt") in said[0], again
    assert "evaluating it again" in said[0] and "results.json" in said[0]
    assert "epoch 1/1" not in again and "resumed from" not in again  # said once, not twice


def test_a_redirected_sweep_log_has_no_colour_codes(tmp_path, run_cli, cli_env):
    """A sweep's log, redirected to a file, is plain text: no terminal colour codes (Optuna's own
    logger colours its lines when it writes them)."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.run",
            "-m",
            "sweep=csrae_optuna",
            "debug=smoke",
            "trainer.progress=false",
            "hydra.sweeper.n_trials=1",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
        ],
        cwd=run_cli.cwd,
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert out.count("study csrae_optuna: no trials yet") == 1  # said once, in plain words
    assert "A new study created" not in out and "Using an existing study" not in out
    assert "\x1b" not in proc.stdout + proc.stderr
