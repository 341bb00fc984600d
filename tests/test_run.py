"""End-to-end tests of `python -m src.run` in a subprocess: the run-output contract, exact resume after
SIGKILL, one clear line for each bad input, and a non-finite loss.

Every run trains on the bundled digits on CPU with one thread, from an empty working directory so that
anything written outside the run dir shows up.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import cli_command, read_results, wait_for_epochs

CONTRACT_KEYS = [
    "status",
    "model",
    "prior",
    "K",
    "dataset",
    "seed",
    "reg_weight",
    "latent_dim",
    "variant",
    "network",
    "weights",
    "lr",
    "epochs",
    "epochs_run",
    "best_epoch",
    "stopped_early",
    "test_nll",
    "test_nll_sem",
    "test_recon",
    "test_reg",
    "val_nll",
    "acc",
    "nmi",
    "ari",
    "acc_mapping",
    "n_clusters_used",
    "is_samples",
    "train_seconds",
    "eval_seconds",
    "n_params",
    "device",
    "error",
    "run_dir",
    "job_num",
    "overrides",
    "images",
]
METRIC_COLUMNS = [
    "epoch",
    "train_loss",
    "train_recon",
    "train_reg",
    "val_loss",
    "val_recon",
    "val_reg",
    "reg_weight",
    "lr",
    "seconds",
]
IMAGES = ["samples.png", "components.png", "reconstructions.png", "latent_scatter.png"]
PNG = b"\x89PNG\r\n\x1a\n"


def metrics_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == METRIC_COLUMNS
        return list(reader)


def assert_no_traceback(proc: subprocess.CompletedProcess) -> None:
    for stream in (proc.stdout, proc.stderr):
        assert "Traceback" not in stream, stream
        assert 'File "' not in stream, stream


def assert_nothing_outside(tmp_path: Path, run_dir: Path, cwd: Path) -> None:
    """Only the run dir (if any) and the empty working directory exist under tmp_path."""
    assert list(cwd.iterdir()) == [], list(cwd.iterdir())
    assert {p.name for p in tmp_path.iterdir()} <= {cwd.name, run_dir.name}


# --- the contract ------------------------------------------------------------------------------------


def test_a_run_writes_the_contract(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    overrides = ["trainer.epochs=2", "prior.K=4", "eval.images=true", "eval.n_images=16", "trainer.seed=3"]
    proc = run_cli(run_dir, *overrides)
    assert proc.returncode == 0, proc.stderr
    assert_no_traceback(proc)
    assert f"done: {run_dir}" in proc.stdout and "test NLL" in proc.stdout

    r = read_results(run_dir)
    assert set(CONTRACT_KEYS) <= set(r), set(CONTRACT_KEYS) - set(r)
    assert r["status"] == "completed" and r["error"] is None
    assert (r["model"], r["prior"], r["K"], r["dataset"], r["seed"]) == ("csrae", "gmm", 4, "digits", 3)
    assert (r["variant"], r["network"], r["weights"], r["latent_dim"]) == ("per_sample", "mlp", "uniform", 40)
    assert r["epochs"] == 2 and r["epochs_run"] == 2 and 1 <= r["best_epoch"] <= 2 and r["stopped_early"] is False
    assert r["is_samples"] == 10 and r["device"] == "cpu" and r["n_params"] > 0
    for key in ("test_nll", "test_nll_sem", "test_recon", "test_reg", "val_nll", "train_seconds", "eval_seconds"):
        assert isinstance(r[key], float) and math.isfinite(r[key]), key
    assert r["test_nll"] > 0 and r["val_nll"] > 0
    assert 0 <= r["acc"] <= 1 and r["acc_mapping"] == "hungarian" and 1 <= r["n_clusters_used"] <= 4
    assert r["run_dir"] == str(run_dir) and r["job_num"] is None
    assert r["overrides"][-len(overrides) :] == overrides
    assert sorted(r["images"]) == sorted(IMAGES)

    rows = metrics_rows(run_dir)
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    for row in rows:
        assert all(math.isfinite(float(row[c])) for c in METRIC_COLUMNS)
    assert float(rows[0]["reg_weight"]) < float(rows[1]["reg_weight"])  # linear warm-up

    for name in ("last.pt", "best.pt"):
        ckpt = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert {"model", "optimizer", "state", "rng_torch", "rng_generator"} <= set(ckpt)
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert last["state"]["epoch"] == 2 and best["state"]["epoch"] == r["best_epoch"]

    for name in IMAGES:
        assert (run_dir / name).read_bytes()[:8] == PNG
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        assert (run_dir / ".hydra" / name).is_file()
    assert "epoch 2/2" in (run_dir / "run.log").read_text()
    assert_nothing_outside(tmp_path, run_dir, run_cli.cwd)


# --- resume after SIGKILL ---------------------------------------------------------------------------

RESUME = [
    "trainer.epochs=14",
    "trainer.warmup_epochs=4",
    "trainer.patience=3",
    "prior.K=5",
    "prior.init=kmeans",
    "prior.kmeans_epoch=3",
    "prior.kmeans_samples=500",
    "trainer.seed=1",
    "dataset.max_train=500",  # 5 batches an epoch: the resume is what is tested, not the training
]


def _comparable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, run_cli, cli_env):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = run_cli(whole, *RESUME)
    assert proc.returncode == 0, proc.stderr
    ref = read_results(whole)

    cmd = cli_command(killed, RESUME)
    p = subprocess.Popen(
        cmd, cwd=run_cli.cwd, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_epochs(killed, p, n=4)  # past the k-means refit at epoch 3
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
        p.stderr.close()
    assert p.returncode == -signal.SIGKILL
    interrupted = read_results(killed)
    assert interrupted["status"] == "running"  # SIGKILL leaves no chance to write anything else
    done_before = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["state"]["epoch"]
    assert 1 <= done_before < ref["epochs_run"]

    proc = subprocess.run(cmd, cwd=run_cli.cwd, env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"resumed from {killed / 'checkpoints' / 'last.pt'} after epoch {done_before}" in proc.stdout
    got = read_results(killed)

    rows = metrics_rows(killed)
    epochs = [int(r["epoch"]) for r in rows]
    assert epochs == list(range(1, ref["epochs_run"] + 1)), epochs  # every epoch exactly once
    assert _comparable(rows) == _comparable(metrics_rows(whole))
    for key in (
        "status",
        "epochs_run",
        "best_epoch",
        "stopped_early",
        "test_nll",
        "test_nll_sem",
        "test_recon",
        "test_reg",
        "val_nll",
        "acc",
        "nmi",
        "ari",
        "n_clusters_used",
        "val_acc",
    ):
        assert got[key] == ref[key], (key, got[key], ref[key])
    a = torch.load(whole / "checkpoints" / "best.pt", weights_only=True)["model"]
    b = torch.load(killed / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_marks_the_run_interrupted_and_it_resumes(tmp_path, run_cli, cli_env):
    run_dir = tmp_path / "run"
    cmd = cli_command(run_dir, ["trainer.epochs=8", "prior.K=3"])
    p = subprocess.Popen(cmd, cwd=run_cli.cwd, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_epochs(run_dir, p, n=2)
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err[-3000:]
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"interrupted: rerun the same command with hydra.run.dir={run_dir} to resume"], lines
    r = read_results(run_dir)
    assert r["status"] == "interrupted" and f"hydra.run.dir={run_dir}" in r["error"]
    assert len(metrics_rows(run_dir)) < 8

    proc = subprocess.run(cmd, cwd=run_cli.cwd, env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert read_results(run_dir)["status"] == "completed"
    assert [int(row["epoch"]) for row in metrics_rows(run_dir)] == list(range(1, 9))


# --- bad input: one clear line, non-zero exit, nothing written outside the run dir -------------------

BAD = {
    "K0": (["prior.K=0"], ["prior.K", "0"]),
    "Kabc": (["prior.K=abc"], ["prior.K", "abc", "Integer"]),
    "lr": (["optimizer.lr=-1"], ["optimizer.lr", "-1"]),
    "dataset": (["dataset=nope"], ["dataset", "nope", "digits"]),
    "model": (["model=nope"], ["model", "nope", "csrae, vae"]),
    "unknown-key": (["prior.colour=red"], ["prior.colour"]),
    "enum": (["trainer.device=gpu"], ["trainer.device", "gpu", "cpu"]),
    "standard-K": (["prior=standard", "prior.K=3"], ["prior.K"]),
    "aggregate-vae": (["model=vae", "model.variant=aggregate"], ["aggregate"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gives_one_clear_line(case, tmp_path, run_cli):
    overrides, words = BAD[case]
    run_dir = tmp_path / "run"
    proc = run_cli(run_dir, *overrides, timeout=120)
    assert proc.returncode != 0
    assert_no_traceback(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and all(w in lines[0] for w in words), lines
    if run_dir.exists():  # a bad value (right type) is checked before any work: no metrics, no checkpoints
        assert not (run_dir / "metrics.csv").exists() and not (run_dir / "checkpoints").exists()
        r = read_results(run_dir)
        assert r["status"] == "failed" and all(w in r["error"] for w in words)
    assert_nothing_outside(tmp_path, run_dir, run_cli.cwd)


def test_missing_mnist_names_the_path_and_both_fixes(tmp_path, run_cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    run_dir = tmp_path / "run"
    proc = run_cli(run_dir, "dataset=mnist", f"dataset.root={empty}", "dataset.download=false", timeout=120)
    assert proc.returncode != 0
    assert_no_traceback(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert str(empty / "MNIST" / "raw") in lines[0]
    assert "dataset.root=" in lines[0] and "dataset.download=true" in lines[0]
    assert list(empty.iterdir()) == []  # nothing downloaded or created under the root
    assert not (run_dir / "metrics.csv").exists() and read_results(run_dir)["status"] == "failed"
    assert {p.name for p in tmp_path.iterdir()} == {"cwd", "empty", "run"} and list(run_cli.cwd.iterdir()) == []


def _snapshot(run_dir: Path) -> dict:
    files = [run_dir / "metrics.csv", run_dir / "results.json", *sorted((run_dir / "checkpoints").iterdir())]
    return {p.name: p.read_bytes() for p in files}


def test_corrupt_checkpoint_on_resume(finished_run, tmp_path, run_cli):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: len(last.read_bytes()) // 3])  # a truncated file
    before = _snapshot(run_dir)
    proc = run_cli(run_dir, "prior.K=3", timeout=120)
    assert proc.returncode != 0
    assert_no_traceback(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(last) in lines[0] and "new run dir" in lines[0], lines
    assert _snapshot(run_dir) == before  # the evidence, and the finished run's record, are left as they were
    assert read_results(run_dir)["status"] == "completed"
    assert_nothing_outside(tmp_path, run_dir, run_cli.cwd)


@pytest.mark.parametrize(
    "change", [["model=vae", "prior.K=3"], ["prior.K=3", "model.latent_dim=8"], ["prior.K=3", "optimizer.lr=0.01"]]
)
def test_mismatched_checkpoint_on_resume(change, finished_run, tmp_path, run_cli):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = _snapshot(run_dir)
    proc = run_cli(run_dir, *change, timeout=120)
    assert proc.returncode != 0
    assert_no_traceback(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "different" in lines[0] and "last.pt" in lines[0], lines
    assert "trainer.resume=false" in lines[0] or "new run dir" in lines[0]
    assert _snapshot(run_dir) == before  # the other configuration's checkpoints, metrics and record survive
    assert read_results(run_dir)["status"] == "completed"
    assert_nothing_outside(tmp_path, run_dir, run_cli.cwd)


# --- non-finite loss --------------------------------------------------------------------------------


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    proc = run_cli(run_dir, "trainer.epochs=3", "optimizer.lr=1e6", timeout=120)  # Adam with lr 1e6 blows up
    assert proc.returncode != 0
    assert_no_traceback(proc)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    msg = lines[0]
    assert "non-finite" in msg and "epoch 1" in msg and "step " in msg
    assert "reconstruction" in msg or "regulariser" in msg
    r = read_results(run_dir)
    assert r["status"] == "failed" and "non-finite" in r["error"] and r["test_nll"] is None and r["val_nll"] is None
    assert not (run_dir / "checkpoints" / "last.pt").exists()  # nothing good to keep in epoch 1
    assert_nothing_outside(tmp_path, run_dir, run_cli.cwd)


def test_non_finite_loss_later_keeps_the_last_good_checkpoint(compose, tmp_path, monkeypatch):
    """In process, with a hook: the loss turns NaN in epoch 2; epoch 1's checkpoint and row survive."""
    from src.models import Autoencoder
    from src.pipeline import run_experiment
    from src.train import NonFiniteLossError

    cfg = compose("trainer.epochs=3", "trainer.batch_size=400")  # 4 steps per epoch
    calls = {"n": 0}
    real = Autoencoder.loss_terms

    def poisoned(self, x):
        terms = real(self, x)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 6:  # epoch 2, step 1 (0-based)
                terms.reg = terms.reg * float("nan")
        return terms

    monkeypatch.setattr(Autoencoder, "loss_terms", poisoned)
    with pytest.raises(NonFiniteLossError) as err:
        run_experiment(cfg, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "regulariser" in msg and "epoch 2, step 1" in msg and "(epoch 1)" in msg
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["status"] == "failed" and "epoch 2" in r["error"]
    assert [int(row["epoch"]) for row in metrics_rows(tmp_path)] == [1]
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert last["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


# --- trainer.compile --------------------------------------------------------------------------------


def test_compile_is_not_part_of_the_checkpoint_fingerprint(compose):
    """A run started without trainer.compile resumes with it (and back): it changes speed, not the model."""
    from src.settings import train_settings

    plain, compiled = train_settings(compose("trainer.compile=false")), train_settings(compose("trainer.compile=true"))
    assert compiled.compile and not plain.compile
    assert compiled.fingerprint == plain.fingerprint and "compile" not in plain.fingerprint


def test_compile_reports_its_time_apart_from_the_epochs(compose, tmp_path, monkeypatch, caplog):
    """The real torch.compile graph capture, with the aot_eager backend so that no C++ build slows the suite."""
    import functools

    import src.train

    monkeypatch.setattr(src.train.torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    from src.pipeline import run_experiment

    with caplog.at_level("INFO", logger="src.train"):
        run_experiment(compose("trainer.compile=true", "model=csrae", "prior=gmm", "prior.K=3"), tmp_path)
    r = read_results(tmp_path)
    assert r["status"] == "completed" and r["compile_seconds"] > 0
    epoch_seconds = sum(float(row["seconds"]) for row in metrics_rows(tmp_path))
    assert r["train_seconds"] == pytest.approx(epoch_seconds)
    assert sum("torch.compile:" in m and "not counted" in m for m in caplog.messages) == 1


def test_compile_without_a_working_compiler_is_one_clear_line(tmp_path, cli_env):
    run_dir, cwd = tmp_path / "run", tmp_path / "cwd"
    cwd.mkdir()
    env = {**cli_env, "CXX": str(tmp_path / "no-such-compiler")}  # what inductor builds its C++ with
    proc = subprocess.run(
        cli_command(run_dir, ["model=vae", "prior=standard", "trainer.compile=true"]),
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert_no_traceback(proc)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "trainer.compile=false" in lines[0], proc.stderr
    assert read_results(run_dir)["status"] == "failed"
