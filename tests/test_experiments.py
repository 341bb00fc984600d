"""Protocol files (conf/experiment/), checkpoint compatibility, autoencoder pretraining, the GECO
reconstruction constraint and the few-label evaluation: real configs, real digits, seconds each."""

from __future__ import annotations

import csv
import json
import math
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli import subprocess_env
from helpers import read_results, wait_for_epochs

from src import train as train_mod
from src.config import ConfigError, validate
from src.contract import METRIC_COLUMNS, RESULT_KEYS
from src.geco import W_MAX, W_MIN, GecoSettings, effective_weight, geco_update, start_log_lambda
from src.label_metrics import fewlabel_component_accuracy, fewlabel_logistic_accuracy, fewlabel_metrics, fewlabel_subset
from src.models import build_model
from src.pipeline import run_experiment
from src.priors import GaussianMixture
from src.settings import train_settings
from src.train import build_optimizer, fit

# A run of the MNIST study (/work/runs/mnist_converged/vae_standard_s0),
# with its exact command-line overrides, and the fingerprint its checkpoints carry (read from its
# checkpoints/last.pt). experiment=mnist_density must resume it.
LIVE_RUN = [
    "model=vae",
    "prior=standard",
    "dataset=mnist",
    "dataset.root=/work/shared/data",
    "trainer.epochs=2000",
    "trainer.warmup_epochs=100",
    "trainer.patience=50",
    "trainer.threads=1",
    "trainer.progress=false",
    "eval.is_samples=5000",
]
LIVE_RUN_FINGERPRINT = (
    '[{"hidden_dim": 300, "latent_dim": 40, "likelihood": "bernoulli", "logvar_max": 2.0, "logvar_min": -6.0, '
    '"name": "vae", "network": "mlp", "reg_weight": 1.0, "variant": "per_sample"}, {"K": 1, "code_dim": 16, '
    '"hidden_dim": 64, "init": "random", "init_logvar": 0.0, "init_scale": 1.0, "kmeans_epoch": 10, '
    '"kmeans_samples": 2000, "logvar_max": 2.0, "logvar_min": -6.0, "name": "standard", "train": false, '
    '"weights": "uniform"}, {"binarize": true, "eval_binarize_seed": 777, "max_eval": null, "max_train": null, '
    '"name": "mnist", "split_seed": 0, "test_fraction": 0.2, "val_fraction": 0.1}, 0, {"lr": 0.0005, '
    '"momentum": 0.0, "name": "adam", "nesterov": false, "weight_decay": 0.0}, {"batch_size": 100, '
    '"warmup_epochs": 100}]'
)
# The VampPrior anchor of the MNIST study (~/csrae-runs/mnist_converged/vae_vamp500_s0, started by the
# queue): the fingerprint its checkpoints carry (read from its checkpoints/last.pt).
VAMP500_FINGERPRINT = (
    '[{"hidden_dim": 300, "latent_dim": 40, "likelihood": "bernoulli", "logvar_max": 2.0, "logvar_min": -6.0, '
    '"name": "vae", "network": "mlp", "reg_weight": 1.0, "variant": "per_sample"}, {"K": 500, "code_dim": 16, '
    '"hidden_dim": 64, "init": "random", "init_logvar": 0.0, "init_scale": 1.0, "kmeans_epoch": 10, '
    '"kmeans_samples": 2000, "logvar_max": 2.0, "logvar_min": -6.0, "name": "vamp", "train": true, '
    '"weights": "uniform"}, {"binarize": true, "eval_binarize_seed": 777, "max_eval": null, "max_train": null, '
    '"name": "mnist", "split_seed": 0, "test_fraction": 0.2, "val_fraction": 0.1}, 0, {"lr": 0.0005, '
    '"momentum": 0.0, "name": "adam", "nesterov": false, "weight_decay": 0.0}, {"batch_size": 100, '
    '"warmup_epochs": 100}]'
)
# The default config's fingerprint before model.hidden_dims / constraint / trainer.pretrain_epochs existed.
DEFAULT_FINGERPRINT = (
    '[{"hidden_dim": 300, "latent_dim": 40, "likelihood": "bernoulli", "logvar_max": 2.0, "logvar_min": -6.0, '
    '"name": "csrae", "network": "mlp", "reg_weight": 1.0, "variant": "per_sample"}, {"K": 10, "code_dim": 16, '
    '"hidden_dim": 64, "init": "kmeans", "init_logvar": 0.0, "init_scale": 1.0, "kmeans_epoch": 10, '
    '"kmeans_samples": 2000, "logvar_max": 2.0, "logvar_min": -6.0, "name": "gmm", "train": true, '
    '"weights": "uniform"}, {"binarize": true, "eval_binarize_seed": 777, "max_eval": null, "max_train": null, '
    '"name": "digits", "split_seed": 0, "test_fraction": 0.2, "val_fraction": 0.1}, 0, {"lr": 0.0005, '
    '"momentum": 0.0, "name": "adam", "nesterov": false, "weight_decay": 0.0}, {"batch_size": 100, '
    '"warmup_epochs": 10}]'
)


def fp(compose, *overrides: str) -> str:
    return train_settings(compose(*overrides, tiny=False)).fingerprint


# --- experiment files and checkpoint compatibility -------------------------------------------------


def test_mnist_density_resumes_the_run_started_with_explicit_overrides(compose):
    explicit = fp(compose, *LIVE_RUN)
    assert explicit == LIVE_RUN_FINGERPRINT
    vamp = fp(compose, "experiment=mnist_density", "model=vae", "prior=vamp", "prior.K=500")
    assert vamp == VAMP500_FINGERPRINT  # the VampPrior anchor's checkpoints
    assert (
        fp(
            compose,
            "experiment=mnist_density",
            "model=vae",
            "prior=standard",
            "dataset.root=/work/shared/data",
            "trainer.threads=1",
            "trainer.progress=false",
        )
        == explicit
    )


@pytest.mark.parametrize("prior", ["standard", "vamp", "net"])
def test_priors_other_than_gmm_keep_the_init_their_checkpoints_were_written_with(prior, compose):
    """prior.init only shapes a gmm, but it is part of every prior's checkpoint identity: the schema's
    default became kmeans, so these priors' files keep random, and a protocol's kmeans stays kmeans."""
    import json

    def init(*overrides: str) -> str:
        return json.loads(fp(compose, f"prior={prior}", *overrides))[1]["init"]

    assert init() == "random"
    assert init("experiment=mnist_density") == "random"
    assert init("experiment=mnist_clustering") == "kmeans"
    assert init("prior.init=kmeans") == "kmeans"


@pytest.mark.parametrize("experiment", ["mnist_density", "mnist_clustering", "digits_smoke"])
@pytest.mark.parametrize("model", ["vae", "csrae"])
def test_every_experiment_composes_and_validates(experiment, model, compose):
    cfg = compose(f"experiment={experiment}", f"model={model}", tiny=False)
    validate(cfg)
    assert cfg.model.name.value == model


def test_mnist_density_is_the_vampprior_protocol(compose):
    cfg = compose("experiment=mnist_density", "model=csrae", "prior=vamp", "prior.K=500", tiny=False)
    assert cfg.dataset.name.value == "mnist" and cfg.dataset.binarize
    assert (cfg.model.network.value, cfg.model.hidden_dim, cfg.model.latent_dim) == ("mlp", 300, 40)
    assert (cfg.optimizer.name.value, cfg.optimizer.lr, cfg.trainer.batch_size) == ("adam", 5e-4, 100)
    assert (cfg.trainer.epochs, cfg.trainer.warmup_epochs, cfg.trainer.patience) == (2000, 100, 50)
    assert cfg.eval.is_samples == 5000 and cfg.dataset.max_eval is None
    assert (cfg.model.name.value, cfg.prior.name.value, cfg.prior.K) == ("csrae", "vamp", 500)  # the user's choice
    assert compose("experiment=mnist_density", "trainer.epochs=3", tiny=False).trainer.epochs == 3


def test_new_settings_at_their_neutral_default_keep_old_fingerprints(compose):
    assert fp(compose) == DEFAULT_FINGERPRINT
    assert fp(compose, "eval.fewlabel=false", "eval.fewlabel_seed=3") == DEFAULT_FINGERPRINT  # eval is not identity
    assert (
        fp(compose, "model.geco_rate=0.5", "model.target_recon=12") == DEFAULT_FINGERPRINT
    )  # inert without constraint
    changed = [
        fp(compose, "trainer.pretrain_epochs=2"),
        fp(compose, "model.hidden_dims=[300,300]"),
        fp(compose, "model.constraint=reconstruction", "model.target_recon=12"),
        fp(compose, "model.constraint=reconstruction", "model.target_recon=13"),
    ]
    assert DEFAULT_FINGERPRINT not in changed and len(set(changed)) == len(changed)


def test_mnist_density_refits_a_gmm_early_in_its_warm_up(compose):
    """prior.kmeans_epoch = 10 under mnist_density is the protocol's choice (docs/PROTOCOLS.md): the refit
    comes while the warm-up keeps the regulariser at a tenth of its weight, not at the warm-up's end."""
    cfg = compose("experiment=mnist_density", "model=csrae", "prior=gmm", tiny=False)
    s = train_settings(cfg)
    assert s.kmeans_epoch == 10 and s.warmup_epochs == 100
    assert train_mod.regulariser_weight(s.kmeans_epoch, 1.0, s.warmup_epochs) == pytest.approx(0.1)


def test_mnist_clustering_is_the_vade_protocol(compose):
    cfg = compose("experiment=mnist_clustering", "model=csrae", tiny=False)
    assert cfg.dataset.name.value == "mnist" and cfg.prior.name.value == "gmm" and cfg.prior.K == 10
    assert cfg.trainer.pretrain_epochs > 0 and cfg.prior.init.value == "kmeans" and cfg.model.latent_dim == 10
    model = build_model(cfg.model, cfg.prior, (1, 28, 28))
    enc = [m.out_features for m in model.encoder.body if isinstance(m, torch.nn.Linear)]
    dec = [m.out_features for m in model.decoder.body if isinstance(m, torch.nn.Linear)]
    assert enc == [500, 500, 2000] and dec == [2000, 500, 500, 784]
    assert any(isinstance(m, torch.nn.ReLU) for m in model.encoder.body)
    settings = train_settings(cfg)
    assert settings.refit_after_pretraining and settings.kmeans_epoch is None  # refit once, after pretraining


def test_the_default_mlp_is_unchanged_by_the_width_list(compose):
    """hidden_dims=null builds the same gated 300-300 network, parameter for parameter, as before."""
    a = build_model(compose().model, compose().prior, (1, 8, 8))
    b = build_model(compose("model.hidden_dims=[300,300]").model, compose().prior, (1, 8, 8))
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["model.constraint=reconstruction"], "model.target_recon"),
        (["model.constraint=reconstruction", "model.target_recon=10", "model.geco_alpha=1.0"], "model.geco_alpha"),
        (["model.network=relu_mlp"], "model.hidden_dims"),
        (["model.hidden_dims=[]"], "model.hidden_dims"),
        (["trainer.pretrain_epochs=-1"], "trainer.pretrain_epochs"),
    ],
)
def test_new_settings_are_validated(overrides, words, compose):
    with pytest.raises(ConfigError, match=words):
        validate(compose(*overrides))


def test_digits_smoke_runs_pretraining_and_the_constraint_end_to_end(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    proc = run_cli(
        run_dir,
        "experiment=digits_smoke",
        "trainer.pretrain_epochs=2",
        "trainer.epochs=3",
        "model.constraint=reconstruction",
        "model.target_recon=5",
        tiny=False,
    )
    assert proc.returncode == 0, proc.stderr
    r = read_results(run_dir)
    assert r["status"] == "completed" and r["constraint"] == "reconstruction" and r["target_recon"] == 5.0
    assert r["pretrain_epochs"] == 2 and r["n_test"] == 359 and set(RESULT_KEYS) <= set(r)
    assert all(0.0 < r[f"fewlabel_{kind}_{n}"] <= 1.0 for kind in ("lr", "comp") for n in (1, 10, 100))
    with open(run_dir / "pretrain_metrics.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2]
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == METRIC_COLUMNS and [int(x["epoch"]) for x in rows] == [1, 2, 3]
    weights = [float(x["reg_weight"]) for x in rows]
    assert weights[0] < 1.0 and weights == sorted(weights, reverse=True)  # κ=5 is out of reach: the weight falls


# --- pretraining, GECO and exact resume (in process) -----------------------------------------------


def _setup(compose, digits, *overrides):
    cfg = compose("trainer.device=cpu", *overrides)
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg.model, cfg.prior, digits.image_shape)
    return cfg, model, build_optimizer(model.parameters(), cfg.optimizer), train_settings(cfg)


def _rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def test_pretraining_trains_the_autoencoder_then_refits_the_gmm(compose, digits, tmp_path, caplog):
    cfg, model, opt, settings = _setup(
        compose, digits, "trainer.pretrain_epochs=3", "trainer.epochs=1", "prior.kmeans_samples=500"
    )
    before = model.prior.mu.detach().clone()
    calls = []
    real = GaussianMixture.fit_to_codes

    def spy(self, codes, code_vars=None, seed=0):
        calls.append(codes.shape)
        return real(self, codes, code_vars, seed)

    GaussianMixture.fit_to_codes = spy
    try:
        fit(model, digits, opt, settings, tmp_path, torch.device("cpu"))
    finally:
        GaussianMixture.fit_to_codes = real
    rows = _rows(tmp_path / "pretrain_metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    recon = [float(r["train_recon"]) for r in rows]
    assert recon[-1] < recon[0]
    assert calls == [(500, cfg.model.latent_dim)]  # once, after pretraining; not again at kmeans_epoch
    assert not torch.equal(before, model.prior.mu.detach())


@pytest.mark.parametrize(
    "overrides, stop_in",
    [
        (["trainer.pretrain_epochs=3", "trainer.epochs=2", "prior.kmeans_samples=500"], "pretrain_metrics.csv"),
        (
            ["model.constraint=reconstruction", "model.target_recon=12", "model.geco_rate=0.01", "trainer.epochs=4"],
            "metrics.csv",
        ),
    ],
)
def test_a_run_stopped_mid_way_resumes_exactly(overrides, stop_in, compose, digits, tmp_path, monkeypatch):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    for d in (whole, stopped):
        d.mkdir()
    *_, model, opt, settings = _setup(compose, digits, *overrides)
    fit(model, digits, opt, settings, whole, torch.device("cpu"))
    ref = {k: v.clone() for k, v in model.state_dict().items()}

    real_append, seen = train_mod.append_metrics, []

    def append_then_die(path, row, *args):  # killed after the 2nd row of `stop_in`, before its checkpoint
        real_append(path, row, *args)
        seen.append(path.name)
        if seen.count(stop_in) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "append_metrics", append_then_die)
    *_, model, opt, settings = _setup(compose, digits, *overrides)
    with pytest.raises(KeyboardInterrupt):
        fit(model, digits, opt, settings, stopped, torch.device("cpu"))
    monkeypatch.setattr(train_mod, "append_metrics", real_append)

    torch.manual_seed(12345)  # a new process: nothing of the old RNG state survives but the checkpoint
    *_, model, opt, settings = _setup(compose, digits, *overrides)
    fit(model, digits, opt, settings, stopped, torch.device("cpu"))
    for name in ("metrics.csv", "pretrain_metrics.csv"):
        if (whole / name).exists():
            assert _rows(stopped / name) == _rows(whole / name), name
    got = model.state_dict()
    assert all(torch.equal(got[k], ref[k]) for k in ref)


def test_geco_update_moves_the_weight_against_the_constraint():
    s = GecoSettings(target=50.0, alpha=0.9, rate=0.01, start_weight=2.0)
    log_lam = start_log_lambda(s)
    assert effective_weight(log_lam) == pytest.approx(2.0)
    up, c_ma = geco_update(log_lam, None, recon=60.0, settings=s)  # C = +10: reconstruction too poor
    assert c_ma == 10.0 and effective_weight(up) == pytest.approx(2.0 * math.exp(-0.1))
    down, c_ma2 = geco_update(up, c_ma, recon=40.0, settings=s)  # C = -10, moving average 0.9·10 − 0.1·10 = 8
    assert c_ma2 == pytest.approx(8.0) and effective_weight(down) == pytest.approx(
        effective_weight(up) * math.exp(-0.08)
    )
    lo, hi = log_lam, log_lam
    for _ in range(10_000):
        lo, _ = geco_update(lo, None, recon=1e4, settings=s)
        hi, _ = geco_update(hi, None, recon=0.0, settings=s)
    assert effective_weight(lo) == pytest.approx(W_MIN) and effective_weight(hi) == pytest.approx(W_MAX)


def test_geco_weight_follows_the_constraint_every_step(compose, digits, tmp_path):
    """With α = 0 the multiplier integrates each step's C = recon − κ, so over an epoch
    log(w_e / w_{e-1}) = −ν Σ_steps (recon_step − κ): the weight falls while the reconstruction is worse
    than κ and rises once it is better (κ = 12 is crossed on digits within 25 epochs)."""
    *_, model, opt, settings = _setup(
        compose,
        digits,
        "model.constraint=reconstruction",
        "model.target_recon=12",
        "model.geco_rate=0.002",
        "model.geco_alpha=0",
        "trainer.epochs=25",
        "trainer.patience=0",
        "prior.init=random",
    )
    fit(model, digits, opt, settings, tmp_path, torch.device("cpu"))
    rows = _rows(tmp_path / "metrics.csv")
    w = np.log([1.0] + [float(r["reg_weight"]) for r in rows])  # model.reg_weight = 1 is the start
    c = np.array([float(r["train_recon"]) for r in rows]) - 12
    steps = math.ceil(len(digits.train.x) / 100)
    assert (c > 1).any() and (c < -1).any()
    clear = np.abs(c) > 1  # the epoch mean is batch-size weighted; a near-zero C may differ in sign per step
    assert np.all(np.sign(np.diff(w))[clear] == -np.sign(c[clear]))
    assert np.allclose(np.diff(w), -0.002 * steps * c, rtol=0.1, atol=0.01)


# --- few labels ------------------------------------------------------------------------------------


def test_fewlabel_subsets_are_fixed_nested_and_per_class():
    labels = np.repeat(np.arange(3), [5, 7, 2])
    one, two = fewlabel_subset(labels, 1, seed=4), fewlabel_subset(labels, 2, seed=4)
    assert np.array_equal(one, fewlabel_subset(labels, 1, seed=4))
    assert np.bincount(labels[two]).tolist() == [2, 2, 2] and set(one) <= set(two)
    assert fewlabel_subset(labels, 3, seed=4) is None  # class 2 has only two points
    assert any(not np.array_equal(fewlabel_subset(labels, 2, seed=s), two) for s in range(5, 10))


def test_fewlabel_accuracies_on_known_answers():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 50)
    feats = np.eye(3)[y] * 5 + rng.normal(size=(150, 3)) * 0.1
    assert fewlabel_logistic_accuracy(feats[::10], y[::10], feats, y) == 1.0
    comps = np.array([2, 0, 1])[y]  # components are the classes, renamed
    assert fewlabel_component_accuracy(comps[::10], y[::10], comps, y) == 1.0
    # Component 3 gets no labelled point: it predicts the labelled points' majority (class 1 here).
    train_c, train_y = np.array([0, 1, 1, 1]), np.array([0, 1, 1, 2])
    test_c, test_y = np.array([0, 1, 3, 3]), np.array([0, 1, 1, 2])
    assert fewlabel_component_accuracy(train_c, train_y, test_c, test_y) == 0.75
    m = fewlabel_metrics(feats, y, feats, y, comps, comps, ns=(1, 10, 60))
    assert m["fewlabel_lr_10"] == 1.0 and m["fewlabel_comp_1"] == 1.0
    assert m["fewlabel_lr_60"] is None and m["fewlabel_comp_60"] is None  # only 50 per class
    assert fewlabel_metrics(feats, y, feats, y, ns=(1,))["fewlabel_comp_1"] is None  # no components


def test_results_carry_fewlabel_accuracies(compose, tmp_path):
    """(The gmm case runs through the CLI in test_digits_smoke_runs_pretraining_and_the_constraint_end_to_end.)"""
    cfg = compose(
        "experiment=digits_smoke",
        "trainer.epochs=2",
        "prior=standard",
        "trainer.device=cpu",
        "trainer.threads=1",
        "trainer.progress=false",
    )
    run_experiment(cfg, tmp_path)
    r = json.loads((tmp_path / "results.json").read_text())
    for n in (1, 10, 100):
        assert 0.1 < r[f"fewlabel_lr_{n}"] <= 1.0 and r[f"fewlabel_comp_{n}"] is None  # one component: no comp
    assert r["fewlabel_lr_100"] > r["fewlabel_lr_1"]


# --- the MNIST queue (benchmarks/mnist_converged.py) -------------------------------------------------


def _queue_module():
    import importlib.util

    from helpers import REPO

    spec = importlib.util.spec_from_file_location("mnist_converged", REPO / "benchmarks" / "mnist_converged.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("epochs", [None, 800])
@pytest.mark.parametrize(
    "name, fingerprint", [("vae_standard_s0", LIVE_RUN_FINGERPRINT), ("vae_vamp500_s0", VAMP500_FINGERPRINT)]
)
def test_the_queue_adopts_the_runs_in_progress(compose, name, fingerprint, epochs):
    """The anchors are training in their run dirs (vae_standard_s0 was started by hand with explicit
    overrides): the queue's command for each must give the fingerprint its checkpoints carry, with or
    without a session's epoch cap (--epochs)."""
    q = _queue_module()
    name, experiment, overrides = next(p for p in q.PLAN if p[0] == name)
    cmd = q.command(name, experiment, overrides, Path("/runs"), epochs)
    assert (f"trainer.epochs={epochs}" in cmd) == (epochs is not None)
    args = [a for a in cmd[3:] if not a.startswith("hydra.")]
    cfg = compose(
        *[a if not a.startswith("dataset.root=") else "dataset.root=/work/shared/data" for a in args], tiny=False
    )
    assert train_settings(cfg).fingerprint == fingerprint


def test_the_plan_runs_the_anchors_first_and_takes_lambda_from_validation_only(compose):
    """The study's order: the two anchors (names and overrides as their run dirs were started), the
    same-prior pair and the clustering protocol over seeds 0-2, then the later rows. No row fixes
    CSRAE's λ: each csrae row without the GECO constraint takes it from the λ search; the vae rows keep
    β = 1."""
    q = _queue_module()
    assert q.PLAN[:2] == [
        ("vae_standard_s0", "mnist_density", ["model=vae", "prior=standard"]),
        ("vae_vamp500_s0", "mnist_density", ["model=vae", "prior=vamp", "prior.K=500"]),
    ]
    names = [name for name, _, _ in q.PLAN]
    pair = [f"{m}_gmm10_s{s}" for m in ("csrae", "vae") for s in (0, 1, 2)]
    clustering = [f"clu_{m}_gmm10_s{s}" for m in ("csrae", "vae") for s in (0, 1, 2)]
    later = {"vae_gmm10_geco_s0", "csrae_gmm10_geco_s0", "vae_gmm50_s0", "csrae_gmm50_s0", "csrae_vamp500_s0"}
    assert names[2:8] == pair and names[8:14] == clustering and set(names[14:]) == later
    for name, experiment, overrides in q.PLAN:
        assert not any(o.startswith("model.reg_weight=") and o != q.CHOSEN_LAMBDA for o in overrides), name
        cfg = compose(f"experiment={experiment}", *[o for o in overrides if o != q.CHOSEN_LAMBDA], tiny=False)
        geco = cfg.model.constraint.value == "reconstruction"
        assert (q.CHOSEN_LAMBDA in overrides) == (cfg.model.name.value == "csrae" and not geco), name
        if cfg.model.name.value == "vae":
            assert cfg.model.reg_weight == 1.0, name


def test_the_committed_tables_hold_no_lambda_chosen_on_test_data():
    """The tables listed the λ = 3 pair (λ from a scan scored on test NLL) as the study's csrae row.
    Every csrae row of mnist_converged.csv is at the λ the search chose on validation, or waits for it."""
    q = _queue_module()
    lam = q.chosen_lambda()
    with open(q.TABLE) as f:
        rows = list(csv.DictReader(f))
    with open(q.PLAN_TABLE) as f:
        plan = {r["name"]: r for r in csv.DictReader(f)}
    assert len(rows) == len(plan) == len(q.PLAN) and list(plan) == [name for name, _, _ in q.PLAN]
    for row, (name, _, overrides) in zip(rows, q.PLAN):
        if q.CHOSEN_LAMBDA in overrides:
            assert row["reg_weight"] == ("" if lam is None else str(lam)), (name, row["reg_weight"])
            assert (plan[name]["state"] == "waiting") == (lam is None), name


def _queue_in(tmp_path, monkeypatch, plan, tables) -> tuple:
    """The queue module running `plan` into tmp_path/runs, its `tables` under tmp_path/results, no report."""
    q = _queue_module()
    monkeypatch.setattr(q, "PLAN", plan(q))
    for name in tables:
        monkeypatch.setattr(q, name, tmp_path / "results" / name.lower())
    monkeypatch.setattr(q, "report", lambda: None)
    monkeypatch.setattr(q, "POLL_S", 0.1)  # look at the jobs often: they take seconds
    monkeypatch.setenv("PYTHONPATH", str(Path(q.ROOT)))
    runs = tmp_path / "runs"
    runs.mkdir()
    return q, runs


def test_the_queue_waits_for_the_lambda_search_then_takes_its_best_validation_trial(tmp_path, monkeypatch):
    q, runs = _queue_in(
        tmp_path,
        monkeypatch,
        lambda q: [
            ("csrae_s0", "digits_smoke", ["model=csrae", q.CHOSEN_LAMBDA, "trainer.epochs=1", "eval.is_samples=5"]),
            ("vae_s0", "digits_smoke", ["model=vae", "trainer.epochs=1", "eval.is_samples=5"]),
        ],
        ("COPIES", "TABLE", "PLAN_TABLE", "LAMBDA_SEARCH"),
    )
    q.run_queue(runs, parallel=1, only=None)  # no λ search yet: csrae waits, the vae row trains
    assert not (runs / "csrae_s0").exists() and q.state("vae_s0", runs)[0] == "done"
    with open(q.PLAN_TABLE) as f:
        plan = {r["name"]: r for r in csv.DictReader(f)}
    assert plan["csrae_s0"]["state"] == "waiting" and "λ search" in plan["csrae_s0"]["reason"]

    # A search whose best validation trial is not its best test trial: λ follows val_nll, once the search
    # has finished its budget (the CSV is rewritten as trials finish).
    monkeypatch.setattr(q, "lambda_budget", lambda: 4)
    rows = ["0,COMPLETE,1.5,30.2,29.0", "1,COMPLETE,2.25,29.8,29.9", "2,PRUNED,4.0,,", "3,COMPLETE,8.0,31.0,30.5"]
    header = "number,state,reg_weight,val_nll,test_nll\n"
    q.LAMBDA_SEARCH.write_text(header + "\n".join(rows[:3] + ["3,RUNNING,8.0,,"]) + "\n")
    assert q.chosen_lambda() is None
    q.LAMBDA_SEARCH.write_text(header + "\n".join(rows) + "\n")
    assert q.chosen_lambda() == 2.25
    q.run_queue(runs, parallel=1, only=None)
    assert read_results(runs / "csrae_s0")["reg_weight"] == 2.25
    with open(q.TABLE) as f:
        assert [r["reg_weight"] for r in csv.DictReader(f)] == ["2.25", "1.0"]


def test_the_queue_trains_collects_and_tabulates(tmp_path, monkeypatch):
    q = _queue_module()
    monkeypatch.setattr(
        q,
        "PLAN",
        [
            ("smoke_s0", "digits_smoke", ["trainer.epochs=1", "eval.is_samples=5"]),
            ("later_s0", "digits_smoke", ["model=vae"]),
        ],
    )
    monkeypatch.setattr(q, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(q, "COPIES", tmp_path / "results" / "mnist_converged_runs")
    monkeypatch.setattr(q, "TABLE", tmp_path / "results.csv")
    monkeypatch.setattr(q, "PLAN_TABLE", tmp_path / "plan.csv")
    monkeypatch.setattr(q, "POLL_S", 0.1)  # look at the jobs often: they take seconds
    monkeypatch.setenv("PYTHONPATH", str(Path(q.ROOT)))
    runs = tmp_path / "runs"
    runs.mkdir()
    q.run_queue(runs, parallel=1, only=["smoke_s0"])
    assert q.state("smoke_s0", runs)[0] == "done" and q.state("later_s0", runs) == ("todo", "not started")
    copied = tmp_path / "results" / "mnist_converged_runs" / "smoke_s0"
    assert json.loads((copied / "results.json").read_text())["status"] == "completed"
    assert (copied / "metrics.csv").exists() and (copied / ".hydra" / "config.yaml").exists()
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == q.COLUMNS and [r["configuration"] for r in rows] == [
        "digits_smoke:smoke",
        "digits_smoke:later",
    ]
    assert rows[0]["test_nll"] and rows[0]["is_samples"] == "5" and rows[0]["epochs_run"] == "1"
    assert rows[1]["model"] == "vae" and rows[1]["test_nll"] == "" and rows[1]["constraint"] == "none"
    with open(tmp_path / "plan.csv") as f:
        assert [r["state"] for r in csv.DictReader(f)] == ["done", "todo"]
    # The report over the copies (it was refused while the copies lived inside its directory).
    assert "smoke_s0" in (tmp_path / "results" / "mnist_converged" / "report.md").read_text()


def test_the_queue_finishes_started_runs_before_it_starts_new_ones(tmp_path, monkeypatch, capsys):
    """A session ends mid-run: next time the queue resumes the half-trained run before a new row, even
    one planned earlier (a converged run is hours of work; leaving it half done helps no one)."""
    q, runs = _queue_in(
        tmp_path,
        monkeypatch,
        lambda q: [
            ("new_s0", "digits_smoke", ["trainer.epochs=1", "eval.is_samples=5"]),
            ("started_s0", "digits_smoke", ["trainer.epochs=6", "eval.is_samples=5"]),
        ],
        ("COPIES", "TABLE", "PLAN_TABLE"),
    )
    _, experiment, overrides = q.PLAN[1]
    p = subprocess.Popen(
        q.command("started_s0", experiment, overrides, runs),
        cwd=q.ROOT,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_epochs(runs / "started_s0", p, n=2)
        p.send_signal(signal.SIGTERM)  # the session's end
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
        p.stderr.close()
    assert [q.state(n, runs)[0] for n in ("new_s0", "started_s0")] == ["todo", "resumable"]
    capsys.readouterr()
    q.run_queue(runs, parallel=1, only=None)
    starts = [ln.split()[3].rstrip(":") for ln in capsys.readouterr().out.splitlines() if " start " in ln]
    assert starts == ["started_s0", "new_s0"]
    assert [q.state(n, runs)[0] for n in ("new_s0", "started_s0")] == ["done", "done"]
    assert read_results(runs / "started_s0")["epochs_run"] == 6


def test_a_run_capped_by_a_sessions_budget_is_extended_later(tmp_path, monkeypatch):
    """--epochs caps a session's training; the capped run completes, but it is not the planned run: the
    queue lists it as capped (no results in the table) and extends it from its last.pt next time."""
    q, runs = _queue_in(
        tmp_path,
        monkeypatch,
        lambda q: [("capped_s0", "digits_smoke", ["trainer.epochs=3", "eval.is_samples=5"])],
        ("COPIES", "TABLE", "PLAN_TABLE"),
    )
    q.run_queue(runs, parallel=1, only=None, epochs=1)
    assert read_results(runs / "capped_s0")["epochs_run"] == 1
    st, reason = q.state("capped_s0", runs, planned_epochs=3)
    assert st == "capped" and "after 1 of 3 epochs" in reason
    with open(q.TABLE) as f:
        (row,) = csv.DictReader(f)
    assert row["test_nll"] == "" and row["epochs_run"] == "1"
    q.run_queue(runs, parallel=1, only=None, epochs=1)  # the same cap: nothing more to do
    assert read_results(runs / "capped_s0")["epochs_run"] == 1
    q.run_queue(runs, parallel=1, only=None)
    r = read_results(runs / "capped_s0")
    assert (r["status"], r["epochs_run"]) == ("completed", 3) and q.state("capped_s0", runs, planned_epochs=3)[
        0
    ] == "done"
    with open(runs / "capped_s0" / "metrics.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2, 3]


def _pair_queue(tmp_path, monkeypatch, b_epochs: int) -> tuple:
    """The queue with two one-seed rows to pair: a_s0 (csrae, 1 epoch) and b_s0 (vae, b_epochs)."""
    return _queue_in(
        tmp_path,
        monkeypatch,
        lambda q: [
            ("a_s0", "digits_smoke", ["trainer.epochs=1", "eval.is_samples=5"]),
            ("b_s0", "digits_smoke", [f"trainer.epochs={b_epochs}", "eval.is_samples=5", "model=vae"]),
        ],
        ("COPIES", "TABLE", "PLAN_TABLE", "PAIRED"),
    )


def test_the_queue_pairs_two_runs_point_by_point(tmp_path, monkeypatch, capsys):
    q, runs = _pair_queue(tmp_path, monkeypatch, b_epochs=1)
    q.run_queue(runs, parallel=2, only=None)
    row = q.paired("a_s0", "b_s0", runs, samples=5)
    per_point = {
        n: np.asarray(json.loads((runs / n / "paired_eval_s5_seed1234.json").read_text())["per_point_nll"])
        for n in ("a_s0", "b_s0")
    }
    diff = per_point["a_s0"] - per_point["b_s0"]
    assert row["n_test"] == len(diff) == 359  # every digits test point
    assert row["diff"] == pytest.approx(diff.mean(), abs=1e-3)
    assert row["ci95_lo"] < row["diff"] < row["ci95_hi"] and 0 <= row["p_value"] <= 1
    said = capsys.readouterr().out.splitlines()[-1]  # p as the reports write it (an underflow is not "p = 0")
    assert re.search(r", p (< 0\.001|= 0\.\d+); S=5, 359 test points\) -> ", said), said
    back = q.paired("b_s0", "a_s0", runs, samples=5)  # evaluations are reused, the sign flips
    assert back["diff"] == pytest.approx(-row["diff"], abs=2e-3)
    with open(q.PAIRED) as f:
        assert [(r["a"], r["b"]) for r in csv.DictReader(f)] == [("a_s0", "b_s0"), ("b_s0", "a_s0")]


def test_a_run_in_its_final_evaluation_is_listed_as_evaluating(tmp_path, monkeypatch):
    """An S = 5000 evaluation runs most of an hour after training ends: the plan says so, with the
    evaluation's own progress line, instead of "training"."""
    q, runs = _queue_in(tmp_path, monkeypatch, lambda q: [], ("COPIES", "TABLE", "PLAN_TABLE"))
    args = ["trainer.epochs=20", "eval.is_samples=20000"]  # seconds of training, minutes of evaluation
    proc = subprocess.Popen(
        q.command("r_s0", "digits_smoke", args, runs),
        cwd=q.ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_epochs(runs / "r_s0", proc, 1)
        seen = [q.state("r_s0", runs)]
        deadline = time.monotonic() + 120
        while seen[-1][0] != "evaluating" and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            seen.append(q.state("r_s0", runs))
    finally:
        proc.kill()
        proc.wait()
    assert seen[0][0] == "training", seen[0]
    st, reason = seen[-1]
    assert st == "evaluating" and re.match(r"\d+ epochs trained; evaluating: S=20000 ", reason), seen[-1]
    assert q.state("r_s0", runs)[0] == "resumable"  # killed: not evaluating any more


def test_pairing_refuses_a_run_that_has_not_finished(tmp_path, monkeypatch):
    """A paired difference of a model still training (or capped by a session's budget) would be taken
    for the final answer: refused in one line, nothing evaluated or written."""
    q, runs = _pair_queue(tmp_path, monkeypatch, b_epochs=3)
    q.run_queue(runs, parallel=2, only=None, epochs=1)  # b_s0 stops at the cap, 1 of its 3 epochs
    with pytest.raises(SystemExit) as stop:
        q.paired("a_s0", "b_s0", runs, samples=5)
    message = str(stop.value)
    assert message.startswith("error: b_s0 is not a finished run (capped: ") and "\n" not in message, message
    assert not q.PAIRED.exists() and not list(runs.glob("*/paired_eval_*.json"))

    # An evaluation kept from the capped model is not the finished run's: evaluated again.
    stale = {"checkpoint_epoch": 1, "per_point_nll": [0.0] * 359}
    (runs / "b_s0" / "paired_eval_s5_seed1234.json").write_text(json.dumps(stale))
    q.run_queue(runs, parallel=1, only=None)  # b_s0 trains on to its 3 epochs
    row = q.paired("a_s0", "b_s0", runs, samples=5)
    fresh = json.loads((runs / "b_s0" / "paired_eval_s5_seed1234.json").read_text())
    assert fresh["checkpoint_epoch"] in (2, 3) and row["nll_b"] == pytest.approx(
        np.mean(fresh["per_point_nll"]), abs=1e-3
    )
    assert row["nll_b"] > 10


def test_a_lambda_search_whose_runs_dir_was_lost_goes_on_from_its_csv(tmp_path, monkeypatch):
    """The search's study lives in the runs dir, which a new machine may not have: its committed CSV gives
    a new study the finished trials back (values, interim curves, results), so only the rest run again."""
    import importlib

    from helpers import REPO

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    search = importlib.import_module("mnist_lambda_search")
    monkeypatch.setattr(search, "LAMBDA_SEARCH", tmp_path / "mnist_lambda_search.csv")
    search.LAMBDA_SEARCH.write_text(
        ",".join(search.COLUMNS)
        + "\n"
        + '0,COMPLETE,1.5,96.5,0.3,60,97.1,96.0,/lost/0,"{""10"": 120.5, ""60"": 97.1}"\n'
        + '1,PRUNED,12.0,,,20,130.2,,/lost/1,"{""10"": 140.0, ""20"": 130.2}"\n'
        + "2,RUNNING,3.0,,,,,,/lost/2,{}\n"
    )
    runs = tmp_path / "runs"
    (runs / "lambda_search").mkdir(parents=True)
    from src.sweeps.storage import ensure_study

    study = ensure_study(search.storage(runs), search.NAME, ["minimize"], ["val_nll"])
    assert search.restore(study) == 2
    assert search.restore(study) == 0  # only a new study takes trials back
    done, pruned = study.trials
    assert (done.state.name, done.value, done.params) == ("COMPLETE", 96.5, {"model.reg_weight": 1.5})
    assert (pruned.state.name, pruned.intermediate_values) == ("PRUNED", {10: 140.0, 20: 130.2})
    search.write_csv(runs)
    with open(search.LAMBDA_SEARCH, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["state"], r["reg_weight"], r["val_nll"], r["test_nll"], r["run_dir"]) for r in rows] == [
        ("COMPLETE", "1.5", "96.5", "96.0", "/lost/0"),
        ("PRUNED", "12.0", "", "", "/lost/1"),
    ]
    assert json.loads(rows[0]["interims"]) == {"10": 120.5, "60": 97.1}
    # Its figure is drawn from the CSV alone, beside it.
    png = search.draw(search.LAMBDA_SEARCH)
    assert png == tmp_path / "mnist_lambda_search.png" and png.read_bytes()[:4] == b"\x89PNG"
