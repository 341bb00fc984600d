"""Tests for src/evaluate.py: the importance-sampled NLL, clustering metrics, the PNG images, and
re-evaluating a finished run (src/finished_runs.py: load_model, `python -m src.evaluate RUN_DIR`).

The IS-NLL checks are statistical (they compare Monte-Carlo means within a few standard errors), on
models trained for an epoch on the real digits data.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import read_results

from src import evaluate, label_metrics
from src.checkpoints import CheckpointError
from src.data import load_dataset
from src.divergences import kl_monte_carlo
from src.finished_runs import load_model, main, reevaluate
from src.formatting import duration
from src.models import build_model
from src.settings import TrainSettings
from src.train import build_optimizer, fit


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits):
    """name -> a model trained for one epoch on digits (vae+standard, vae+gmm, csrae+gmm)."""
    from helpers import compose_config

    models = {}
    for name, overrides in {
        "vae-standard": ["model=vae", "prior=standard"],
        "vae-gmm": ["model=vae", "prior=gmm", "prior.K=5", "prior.weights=learned"],
        "csrae-gmm": ["model=csrae", "prior=gmm", "prior.K=5"],
    }.items():
        cfg = compose_config(*overrides)
        torch.manual_seed(0)
        model = build_model(cfg.model, cfg.prior, digits.image_shape)
        opt = build_optimizer(model.parameters(), cfg.optimizer)
        settings = TrainSettings(
            epochs=1, batch_size=100, reg_weight=1.0, checkpoint=False, resume=False, progress=False
        )
        fit(model, digits, opt, settings, tmp_path_factory.mktemp(name), torch.device("cpu"))
        models[name] = model.eval()
    return models


def _neg_elbo_draws(model, x: torch.Tensor, repeats: int) -> torch.Tensor:
    """[repeats, N] one-sample estimates of -ELBO = E_q[-log p(x|z)] + KL(q(z|x) || p(z)).

    KL in closed form for the standard prior (the VAE's own regulariser), else its Monte-Carlo
    estimate log q(z|x) - log p(z) at the same z."""
    out = []
    with torch.no_grad():
        mu, logvar = model.encode(x)
        for _ in range(repeats):
            z = model.reparameterise(mu, logvar)
            recon = -model.log_likelihood(x, model.decode(z))
            if model.prior.K == 1 and model.objective == "kl":
                kl = model.regulariser(mu, logvar, z)
            else:
                kl = kl_monte_carlo(z, mu, logvar, *model.prior_components())
            out.append(recon + kl)
    return torch.stack(out)


@pytest.mark.parametrize("name", ["vae-standard", "vae-gmm", "csrae-gmm"])
def test_is_nll_with_one_sample_is_the_negative_elbo_in_expectation(name, trained, digits):
    model = trained[name]
    x = digits.test.x[:12]
    repeats = 1500
    # Each copy of a point is a separate evaluation point, so it gets its own noise: S=1 estimates.
    nll1 = evaluate.importance_sampled_nll(model, x.repeat(repeats, 1, 1, 1), n_samples=1, seed=5).reshape(repeats, -1)
    torch.manual_seed(6)
    elbo = _neg_elbo_draws(model, x, repeats)
    assert torch.isfinite(nll1).all() and torch.isfinite(elbo).all()
    diff = nll1.mean(0) - elbo.mean(0)
    se = torch.sqrt(nll1.var(0) / repeats + elbo.var(0) / repeats)
    assert torch.all(diff.abs() < 4.5 * se), (diff, se)
    overall_se = math.sqrt(nll1.mean(1).var().item() / repeats + elbo.mean(1).var().item() / repeats)
    assert abs(diff.mean().item()) < 4 * overall_se
    if name == "vae-standard":  # the model's own loss (recon + 1 · closed-form KL) is the same quantity
        torch.manual_seed(7)
        own = torch.stack([model.loss_terms(x).total(1.0) for _ in range(400)])
        assert abs(own.mean().item() - nll1.mean().item()) < 4 * math.sqrt(own.var().item() / 400 + overall_se**2)


@pytest.mark.parametrize("name", ["vae-standard", "csrae-gmm"])
def test_is_nll_does_not_increase_with_more_samples(name, trained, digits):
    model = trained[name]
    x = digits.test.x
    means, sems = [], []
    for s in (1, 4, 16, 64):
        runs = torch.stack([evaluate.importance_sampled_nll(model, x, n_samples=s, seed=100 * s + r) for r in range(3)])
        means.append(runs.mean().item())
        sems.append((runs.mean(0).std() / math.sqrt(x.shape[0])).item())
    for m_small, m_big in zip(means, means[1:]):
        assert m_big <= m_small + 1e-3, means  # the bound tightens: NLL goes down (or stays)
    assert means[0] - means[-1] > 3 * sems[0], means  # and clearly so from S=1 to S=64
    assert all(m > 0 for m in means)


def test_is_nll_is_independent_of_chunking_and_batching(trained, digits):
    model = trained["vae-gmm"]
    x = digits.test.x[:75]
    ref = evaluate.importance_sampled_nll(model, x, n_samples=150, chunk=150, batch=75, seed=11)
    for chunk, batch in [(1, 75), (7, 75), (64, 16), (150, 1), (33, 10), (500, 500)]:
        got = evaluate.importance_sampled_nll(model, x, n_samples=150, chunk=chunk, batch=batch, seed=11)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4, msg=f"chunk={chunk} batch={batch}")
    # The seed matters, and a global torch.manual_seed reproduces a run without an explicit seed.
    assert not torch.allclose(evaluate.importance_sampled_nll(model, x, n_samples=150, seed=12), ref)
    torch.manual_seed(3)
    a = evaluate.importance_sampled_nll(model, x, n_samples=20, chunk=20, batch=75)
    torch.manual_seed(3)
    b = evaluate.importance_sampled_nll(model, x, n_samples=20, chunk=3, batch=8)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_a_long_evaluation_logs_its_progress(trained, digits, monkeypatch, caplog):
    """An S = 5000 evaluation of 10 000 points runs most of an hour: a named one logs points done, time
    spent and time left (here after every batch), and naming it changes no number."""
    model, x = trained["vae-gmm"], digits.test.x[:75]
    monkeypatch.setattr(evaluate, "PROGRESS_EVERY_S", 0.0)
    with caplog.at_level("INFO", logger="src.evaluate"):
        named = evaluate.importance_sampled_nll(model, x, n_samples=20, batch=25, seed=5, name="test")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # after 25 and 50 points; the end is the caller's to report
    for line, done in zip(lines, (25, 50)):
        assert re.fullmatch(rf"test NLL \(S=20\): {done}/75 points, \d+ s, about \d+ s left", line), line
    torch.testing.assert_close(named, evaluate.importance_sampled_nll(model, x, n_samples=20, batch=25, seed=5))


def test_durations_read_as_people_write_them():
    assert [duration(s) for s in (0.4, 59.4, 61, 3599, 3600, 7500)] == [
        "0 s",
        "59 s",
        "1 min",
        "1 h 00 min",
        "1 h 00 min",
        "2 h 05 min",
    ]


def test_importance_noise_is_standard_normal_and_partition_free():
    full = evaluate.importance_noise(seed=1, first_index=0, n_points=40, start=0, n=300, dim=3)
    assert full.shape == (300, 40, 3) and full.dtype == torch.float32
    part = evaluate.importance_noise(seed=1, first_index=7, n_points=20, start=130, n=50, dim=3)
    assert torch.equal(part, full[130:180, 7:27])
    big = evaluate.importance_noise(seed=2, first_index=0, n_points=64, start=0, n=2000, dim=4)
    assert abs(big.mean().item()) < 0.01 and abs(big.std().item() - 1) < 0.01
    # No two (point, sample) pairs share noise, across blocks too (float32 values may collide, rows not).
    flat = big.reshape(-1, 4)
    assert torch.unique(flat, dim=0).shape[0] == flat.shape[0]
    assert not torch.equal(big[:64, :16], big[64:128, :16]) and not torch.equal(big[:64, :16], big[:64, 16:32])


def test_is_nll_matches_a_direct_computation(trained, digits):
    """The estimator is LSE_s[log p(x|z_s) + log p(z_s) - log q(z_s|x)] - log S with the documented noise."""
    model = trained["csrae-gmm"]
    x = digits.test.x[:5]
    s = 30
    eps = evaluate.importance_noise(9, 0, 5, 0, s, model.encoder.mean.out_features)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps  # [s, 5, D]
        log_w = torch.stack(
            [
                model.log_likelihood(x, model.decode(z[i]))
                + model.log_prior(z[i])
                - (-0.5 * (math.log(2 * math.pi) + logvar + eps[i] ** 2).sum(-1))
                for i in range(s)
            ]
        )
    expected = -(torch.logsumexp(log_w.double(), 0) - math.log(s))
    got = evaluate.importance_sampled_nll(model, x, n_samples=s, chunk=7, batch=2, seed=9)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-3)


# --- clustering metrics ---------------------------------------------------------------------------


def test_perfect_clustering_under_a_permutation_scores_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    perm = rng.permutation(10)
    m = label_metrics.clustering_metrics(labels, perm[labels], n_components=10)
    assert m["acc"] == pytest.approx(1.0) and m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0)
    assert m["acc_mapping"] == "hungarian" and m["n_clusters_used"] == 10


def test_hungarian_accuracy_on_a_hand_checked_labelling():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    clusters = np.array([5, 5, 3, 3, 3, 3, 7, 5])  # best one-to-one: 5->0 (2), 3->1 (3), 7->2 (1)
    acc, mapping = label_metrics.cluster_accuracy(labels, clusters, n_components=3)
    assert mapping == "hungarian" and acc == pytest.approx(6 / 8)
    # Without n_components the number of clusters used (3 = #classes) decides: one-to-one again.
    assert label_metrics.cluster_accuracy(labels, clusters) == (pytest.approx(6 / 8), "hungarian")
    # With K = 10 > 3 classes each cluster takes its majority class; here that is the same map.
    assert label_metrics.cluster_accuracy(labels, clusters, n_components=10) == (pytest.approx(6 / 8), "many_to_one")
    m = label_metrics.clustering_metrics(labels, clusters, n_components=3)
    assert m["acc"] == pytest.approx(6 / 8) and 0 < m["nmi"] < 1 and m["ari"] < 1
    assert m["n_clusters_used"] == 3


def test_more_components_than_classes_uses_many_to_one():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 1000)
    clusters = labels * 3 + rng.integers(0, 3, 1000)  # every class split over 3 components: K = 30
    m = label_metrics.clustering_metrics(labels, clusters, n_components=30)
    assert m["acc_mapping"] == "many_to_one" and m["acc"] == pytest.approx(1.0)
    assert m["n_clusters_used"] == 30
    assert m["nmi"] < 1 and m["ari"] < 1  # over-clustering is not a perfect partition
    # With one-to-one matching, 30 clusters could cover only 10 of the classes' thirds.
    acc_h, mapping = label_metrics.cluster_accuracy(labels, clusters, n_components=10)
    assert mapping == "hungarian" and acc_h < 0.5

    # Majority vote per component: a component holding 3 of class 0 and 1 of class 1 counts 3.
    labels = np.array([0, 0, 0, 1, 1, 1, 1])
    clusters = np.array([0, 0, 0, 0, 1, 2, 2])
    acc, mapping = label_metrics.cluster_accuracy(labels, clusters, n_components=20)
    assert mapping == "many_to_one" and acc == pytest.approx(6 / 7)
    # K > classes even when few components are used: the mapping follows the model's K.
    acc, mapping = label_metrics.cluster_accuracy(labels, np.zeros(7, dtype=int), n_components=20)
    assert mapping == "many_to_one" and acc == pytest.approx(4 / 7)


def test_a_single_cluster_scores_zero_nmi_and_ari():
    labels = np.repeat(np.arange(4), 25)
    m = label_metrics.clustering_metrics(labels, np.zeros(100, dtype=int), n_components=4)
    assert m["acc"] == pytest.approx(0.25) and m["nmi"] == pytest.approx(0.0) and m["ari"] == pytest.approx(0.0)
    assert m["n_clusters_used"] == 1 and m["acc_mapping"] == "hungarian"


# --- images ---------------------------------------------------------------------------------------


def png_size(path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking the signature and the CRC of every chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path.name}: bad CRC in {kind!r}"
        chunks.append(kind)
        pos += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize(
    "overrides,k_rows,clusters",
    [
        (["prior=gmm", "prior.K=25"], 20, True),  # one row per component, the first 20
        (["prior=vamp", "prior.K=3"], 3, True),
        (["prior=standard", "model.latent_dim=1"], 1, False),  # one component; a 1-D latent space
    ],
)
def test_images_are_valid_pngs(overrides, k_rows, clusters, compose, digits, tmp_path):
    cfg = compose(*overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.prior, digits.image_shape)
    c = evaluate.assign_components(model, digits.test.x) if clusters else None
    written = evaluate.write_images(model, digits.test.x, digits.test.y, tmp_path, n_images=16, seed=0, clusters=c)
    assert written == ["samples.png", "components.png", "reconstructions.png", "latent_scatter.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written)
    cell = 8 * 4 + 4  # 8x8 digits enlarged 4x, plus padding
    assert png_size(tmp_path / "samples.png") == (4 * cell + 4, 4 * cell + 4)  # 16 samples on a 4x4 grid
    assert png_size(tmp_path / "components.png") == (10 * cell + 4, k_rows * cell + 4)
    assert png_size(tmp_path / "reconstructions.png") == (16 * cell + 4, 4 * cell + 4)  # 32 pairs, 16 a row
    w, h = png_size(tmp_path / "latent_scatter.png")
    assert h > 100 and w > (2 if clusters else 1) * 400  # one panel per colouring


# --- re-evaluating a finished run -----------------------------------------------------------------


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run"


def _cli(run_dir: Path, *overrides: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "src.evaluate", str(run_dir), *overrides],
        cwd=run_dir.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, lines
    return lines[0]


def _refused(capsys, *argv) -> str:
    assert main([str(a) for a in argv]) == 2
    return _one_line(capsys.readouterr().err)


def test_load_model_reproduces_the_runs_own_evaluation(finished_run, tmp_path):
    run = load_model(finished_run)
    assert run.checkpoint == finished_run / "checkpoints" / "best.pt" and run.epoch == 1 and not run.model.training
    got = evaluate.evaluate_model(
        run.model, load_dataset(run.cfg.dataset), run.cfg.eval, run.cfg.trainer.seed, tmp_path, torch.device("cpu")
    )
    r = read_results(finished_run)
    # The same weights and eval settings, the same noise (seeded by trainer.seed + 1): the same numbers.
    for key in (
        "test_nll",
        "test_nll_sem",
        "val_nll",
        "test_recon",
        "test_reg",
        "acc",
        "val_acc",
        "fewlabel_lr_10",
        "fewlabel_comp_10",
        "n_test",
    ):
        assert got[key] == r[key], key


def test_a_run_started_from_python_loads_like_a_command_line_run(compose, tmp_path):
    """run_experiment records the config Hydra would have written, so load_model rebuilds the model."""
    from src.pipeline import run_experiment

    cfg = compose("model=vae", "prior=vamp", "prior.K=4")
    run_experiment(cfg, tmp_path / "api")
    run = load_model(tmp_path / "api")
    assert (run.cfg.model.name.value, run.cfg.prior.name.value, run.cfg.prior.K) == ("vae", "vamp", 4)
    got = evaluate.evaluate_model(
        run.model, load_dataset(run.cfg.dataset), run.cfg.eval, run.cfg.trainer.seed, tmp_path, torch.device("cpu")
    )
    assert got["test_nll"] == read_results(tmp_path / "api")["test_nll"]


def test_the_cli_writes_its_own_file_and_leaves_results_json_alone(run_copy, cli_env):
    before = (run_copy / "results.json").read_bytes()
    proc = _cli(run_copy, "eval.is_samples=20", env=cli_env)
    assert proc.returncode == 0, proc.stderr
    assert (run_copy / "results.json").read_bytes() == before
    r = json.loads((run_copy / "eval_is_samples=20.json").read_text())
    assert r["overrides"] == ["eval.is_samples=20"] and r["is_samples"] == 20 and (r["model"], r["K"]) == ("csrae", 3)
    assert r["checkpoint"] == "checkpoints/best.pt" and r["checkpoint_epoch"] == 1 and r["n_test"] == 359
    assert math.isfinite(r["test_nll"]) and r["acc"] is not None and r["eval_seconds"] > 0
    assert proc.stdout.strip().splitlines() == [proc.stdout.strip()] and "test NLL" in proc.stdout
    assert "S=20" in proc.stdout and "evaluating: S=20" in proc.stderr


def test_a_reevaluation_draws_its_pictures_beside_its_file(run_copy):
    path, r = reevaluate(
        run_copy, ["eval.images=true", "eval.fewlabel=false", "eval.clustering=false", "trainer.threads=1"]
    )
    assert path == run_copy / "eval_clustering=false_fewlabel=false_images=true.json" and path.is_file()
    assert r["images"] and all(name.startswith(f"{path.stem}/") and (run_copy / name).is_file() for name in r["images"])
    assert not (run_copy / "samples.png").exists() and r["acc"] is None and r["fewlabel_lr_10"] is None


def test_a_run_without_best_pt_is_loaded_from_last_pt(run_copy):
    """The run evaluates its final weights when best.pt is missing; so does load_model."""
    (run_copy / "checkpoints" / "best.pt").unlink()
    assert load_model(run_copy).checkpoint == run_copy / "checkpoints" / "last.pt"


def test_a_key_no_schema_declares_is_kept(run_copy):
    """A run started with `+trainer.epoch=50` has the key in its config.yaml; its weights still load."""
    config = run_copy / ".hydra" / "config.yaml"
    config.write_text(config.read_text() + "trainer_note: kept\n")
    config.write_text(config.read_text().replace("trainer:\n", "trainer:\n  epoch: 50\n"))
    run = load_model(run_copy)
    assert run.cfg.trainer.epoch == 50 and run.cfg.trainer_note == "kept"


def test_refusals_are_one_line_and_write_nothing(run_copy, tmp_path, capsys):
    before = sorted(p.name for p in run_copy.iterdir())
    assert "not a run directory (no such directory)" in _refused(capsys, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "no .hydra/config.yaml" in _refused(capsys, tmp_path / "empty")
    for override in ("model.latent_dim=2", "prior.K=5", "trainer.seed=1", "dataset.name=mnist"):
        line = _refused(capsys, run_copy, "eval.is_samples=5", override)
        assert override.split("=")[0] in line and "another model" in line, line
    assert "eval.is_samples must be >= 1" in _refused(capsys, run_copy, "eval.is_samples=0")
    assert "is_sample" in _refused(capsys, run_copy, "eval.is_sample=5")
    assert sorted(p.name for p in run_copy.iterdir()) == before


def test_a_checkpoint_of_another_configuration_is_refused(run_copy, capsys):
    config = run_copy / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("  seed: 0\n", "  seed: 1\n"))  # trainer.seed
    with pytest.raises(CheckpointError, match="different configuration"):
        load_model(run_copy)
    assert "different configuration" in _refused(capsys, run_copy, "eval.is_samples=5")
    shutil.rmtree(run_copy / "checkpoints")
    assert "no checkpoints/best.pt or last.pt" in _refused(capsys, run_copy)


def test_a_run_dir_in_use_is_refused_in_one_line(run_copy, cli_env):
    """Another process (a run still training) holds the lock: nothing is evaluated."""
    hold = (
        "import sys, time; from src import rundir; rundir.lock(sys.argv[1]); print('locked', flush=True); "
        "time.sleep(120)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(run_copy)], env=cli_env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = _cli(run_copy, env=cli_env)
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert proc.returncode == 2
    line = _one_line(proc.stderr)
    assert "in use by another process" in line and f"pid {holder.pid}" in line
    assert not list(run_copy.glob("eval_*"))
