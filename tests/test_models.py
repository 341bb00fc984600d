"""Tests for src/models.py, src/priors.py, src/networks.py and the training loop on real data.

Every model × prior combination (and the csrae aggregate variant) is built from the real Hydra
config and trained on sklearn's digits: gradients reach every parameter that should learn, one epoch
lowers the validation loss, and the whole pipeline (training, IS-NLL, clustering, images) completes
with finite numbers. Plus: the conv network, the VaDE-style k-means refit of the GMM prior, closed-form
vs Monte-Carlo KL, sampling one component per draw, and component assignment.
"""

from __future__ import annotations

import csv
import logging
import math

import numpy as np
import pytest
import torch

from src import evaluate
from src.contract import RESULT_KEYS
from src.data import binarize
from src.divergences import kl_monte_carlo, kl_standard_normal
from src.models import Autoencoder, build_model
from src.pipeline import run_experiment
from src.priors import GaussianMixture, NetPrior, StandardNormal, VampPrior
from src.settings import TrainSettings
from src.train import build_optimizer, fit

# (model overrides, prior overrides): every model × prior, plus the csrae aggregate variant and
# learned mixture weights (whose logits must learn too).
COMBOS = {
    "vae-standard": ["model=vae", "prior=standard"],
    "vae-gmm": ["model=vae", "prior=gmm"],
    "vae-vamp": ["model=vae", "prior=vamp", "prior.K=10"],
    "vae-net": ["model=vae", "prior=net"],
    "csrae-standard": ["model=csrae", "prior=standard"],
    "csrae-gmm": ["model=csrae", "prior=gmm"],
    "csrae-vamp": ["model=csrae", "prior=vamp", "prior.K=10"],
    "csrae-net": ["model=csrae", "prior=net"],
    "csrae-aggregate-gmm": ["model=csrae", "model.variant=aggregate", "prior=gmm"],
    "csrae-aggregate-vamp": ["model=csrae", "model.variant=aggregate", "prior=vamp", "prior.K=10"],
    "vae-gmm-learned": ["model=vae", "prior=gmm", "prior.weights=learned"],
    "csrae-net-learned": ["model=csrae", "prior=net", "prior.weights=learned"],
}

PRIOR_CLASS = {"standard": StandardNormal, "gmm": GaussianMixture, "vamp": VampPrior, "net": NetPrior}


def settings(cfg, epochs: int = 1, kmeans_epoch=None, **kw) -> TrainSettings:
    base = dict(
        epochs=epochs,
        batch_size=cfg.trainer.batch_size,
        reg_weight=cfg.model.reg_weight,
        warmup_epochs=0,
        patience=0,
        seed=cfg.trainer.seed,
        checkpoint=True,
        resume=False,
        progress=False,
        kmeans_epoch=kmeans_epoch,
        kmeans_samples=cfg.prior.kmeans_samples,
        fingerprint="test",
    )
    base.update(kw)
    return TrainSettings(**base)


def built(cfg, digits, seed: int = 0) -> Autoencoder:
    torch.manual_seed(seed)
    return build_model(cfg.model, cfg.prior, digits.image_shape)


@torch.no_grad()
def objective(model: Autoencoder, x: torch.Tensor, weight: float = 1.0, seed: int = 123) -> float:
    """The training objective (weight 1) on x with fixed reparameterisation noise."""
    model.eval()
    torch.manual_seed(seed)
    return model.loss_terms(x).total(weight).item()


def assert_all_learnable_parameters_get_gradients(model: Autoencoder, x: torch.Tensor) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    terms = model.loss_terms(x)
    assert terms.recon.shape == terms.reg.shape == (x.shape[0],)
    assert torch.isfinite(terms.recon).all() and torch.isfinite(terms.reg).all()
    terms.total(1.0).backward()
    learnable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert learnable
    for name, p in learnable:
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("combo", list(COMBOS))
def test_every_model_prior_combination_learns_on_digits(combo, compose, digits, tmp_path):
    cfg = compose(*COMBOS[combo], "optimizer.lr=1e-3")
    model = built(cfg, digits)
    assert isinstance(model.prior, PRIOR_CLASS[cfg.prior.name.value])
    assert model.objective == ("kl" if cfg.model.name.value == "vae" else "cs")
    assert model.variant == cfg.model.variant.value

    # Gradients reach the encoder, the decoder and every learnable prior parameter.
    assert_all_learnable_parameters_get_gradients(model, digits.val.x[:64])
    if cfg.prior.name.value != "standard":
        assert any(p.requires_grad for p in model.prior.parameters())
    if cfg.prior.weights.value == "learned":
        assert model.prior.logits is not None and model.prior.logits.requires_grad

    # One epoch on the real training set lowers the objective on the validation set.
    x_val = digits.val.x
    before = objective(model, x_val)
    opt = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optimizer)
    state = fit(model, digits, opt, settings(cfg), tmp_path, torch.device("cpu"))
    after = objective(model, x_val)
    assert state.epoch == 1 and math.isfinite(before) and math.isfinite(after)
    assert after < before, f"{combo}: validation objective {before:.3f} -> {after:.3f} after one epoch"

    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1]
    for key in ("train_loss", "train_recon", "train_reg", "val_loss", "val_recon", "val_reg"):
        assert math.isfinite(float(rows[0][key])), key
    assert float(rows[0]["train_recon"]) > 0  # -log p(x|z) of binary pixels is positive


@pytest.mark.parametrize("combo", ["vae-standard", "vae-vamp", "csrae-gmm", "csrae-net", "csrae-aggregate-gmm"])
def test_pipeline_completes_for_each_prior(combo, compose, tmp_path):
    """run_experiment end to end (train, IS-NLL, clustering, all four images) for each prior family."""
    cfg = compose(*COMBOS[combo], "eval.images=true", "eval.n_images=16")
    val_nll = run_experiment(cfg, tmp_path)
    import json

    r = json.loads((tmp_path / "results.json").read_text())
    assert set(RESULT_KEYS) <= set(r)
    assert r["status"] == "completed" and r["error"] is None
    assert r["val_nll"] == val_nll and math.isfinite(val_nll) and val_nll > 0
    assert math.isfinite(r["test_nll"]) and r["test_nll"] > 0 and r["test_nll_sem"] > 0
    assert r["model"] == cfg.model.name.value and r["prior"] == cfg.prior.name.value and r["K"] == cfg.prior.K
    assert r["epochs_run"] == 1 and r["best_epoch"] == 1 and r["n_params"] > 0
    if cfg.prior.K > 1:
        assert 0 <= r["acc"] <= 1 and r["acc_mapping"] == "hungarian" and 1 <= r["n_clusters_used"] <= cfg.prior.K
        assert r["nmi"] is not None and r["ari"] is not None
    else:
        assert r["acc"] is None and r["nmi"] is None and r["ari"] is None and r["acc_mapping"] is None
    assert sorted(r["images"]) == ["components.png", "latent_scatter.png", "reconstructions.png", "samples.png"]
    for name in r["images"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frozen_prior_does_not_move(compose, digits, tmp_path):
    cfg = compose("model=csrae", "prior=gmm", "prior.init=random", "prior.train=false")
    model = built(cfg, digits)
    assert not any(p.requires_grad for p in model.prior.parameters())
    mu0 = model.prior.mu.detach().clone()
    opt = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optimizer)
    fit(model, digits, opt, settings(cfg), tmp_path, torch.device("cpu"))
    assert torch.equal(model.prior.mu, mu0)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_conv_network_on_digits(likelihood, compose, digits, tmp_path):
    extra = ["dataset.binarize=false"] if likelihood == "gaussian" else []
    cfg = compose("model=csrae", "prior=gmm", "model.network=conv", f"model.likelihood={likelihood}", *extra)
    from src.config import validate
    from src.data import load_dataset

    validate(cfg)
    data = digits if likelihood == "bernoulli" else load_dataset(cfg.dataset)
    model = built(cfg, data)
    assert any(isinstance(m, torch.nn.Conv2d) for m in model.encoder.modules())
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.decoder.modules())
    params = model.decode(torch.zeros(3, cfg.model.latent_dim))
    assert params.shape == (3, 1 if likelihood == "bernoulli" else 2, 8, 8)
    assert_all_learnable_parameters_get_gradients(model, data.val.x[:32])
    before = objective(model, data.val.x)
    opt = build_optimizer(model.parameters(), cfg.optimizer)
    fit(model, data, opt, settings(cfg), tmp_path, torch.device("cpu"))
    after = objective(model, data.val.x)
    assert math.isfinite(after) and after < before


def test_conv_network_rejects_sizes_not_divisible_by_four(compose):
    cfg = compose("model.network=conv")
    with pytest.raises(ValueError, match="divisible by 4"):
        build_model(cfg.model, cfg.prior, (1, 10, 10))


# --- the k-means (VaDE-style) initialisation of the GMM prior -------------------------------------


def _train_gmm(cfg, digits, run_dir, epochs, kmeans_epoch):
    model = built(cfg, digits)
    run_dir.mkdir()
    opt = build_optimizer(model.parameters(), cfg.optimizer)
    state = fit(
        model, digits, opt, settings(cfg, epochs=epochs, kmeans_epoch=kmeans_epoch), run_dir, torch.device("cpu")
    )
    return model, state


def test_kmeans_init_refits_the_gmm_at_kmeans_epoch(compose, digits, tmp_path):
    from sklearn.mixture import GaussianMixture as SkGMM

    cfg = compose(
        "model=csrae",
        "prior=gmm",
        "prior.init=kmeans",
        "prior.kmeans_samples=600",
        "prior.K=5",
        "prior.weights=learned",
    )
    plain, _ = _train_gmm(cfg, digits, tmp_path / "plain", epochs=1, kmeans_epoch=None)
    later, _ = _train_gmm(cfg, digits, tmp_path / "later", epochs=1, kmeans_epoch=2)
    refit, state = _train_gmm(cfg, digits, tmp_path / "refit", epochs=1, kmeans_epoch=1)

    # Not yet at kmeans_epoch: training is exactly the plain one.
    assert torch.equal(later.prior.mu, plain.prior.mu)
    # At kmeans_epoch the means and weights are those of sklearn's diagonal GMM fitted to the
    # encoder's posterior means of the first kmeans_samples training images, binarised as the encoder
    # sees them (one draw, seeded by the run's seed); each variance is the GMM's plus its members'
    # average posterior variance (moment matching the aggregate posterior).
    assert not torch.allclose(refit.prior.mu, plain.prior.mu, atol=1e-3)
    assert digits.binary and not set(digits.train.x.unique().tolist()) <= {0.0, 1.0}  # grey levels kept
    with torch.no_grad():
        refit.eval()
        x = binarize(digits.train.x[:600], torch.Generator().manual_seed(cfg.trainer.seed))
        mu_x, logvar_x = refit.encode(x)
        codes, code_vars = mu_x.double().numpy(), logvar_x.exp().double().numpy()
    sk = SkGMM(n_components=5, covariance_type="diag", random_state=cfg.trainer.seed, reg_covar=1e-4).fit(codes)
    resp = sk.predict_proba(codes)
    expected_var = sk.covariances_ + (resp.T @ code_vars) / resp.sum(0)[:, None]
    logits, mu, logvar = refit.prior.components()
    np.testing.assert_allclose(mu.detach().numpy(), sk.means_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logvar.detach().numpy(), np.clip(np.log(expected_var), -6, 2), atol=1e-4)
    assert (logvar.detach().numpy() >= np.clip(np.log(sk.covariances_), -6, 2) - 1e-6).all()  # never narrower
    np.testing.assert_allclose(torch.softmax(logits, 0).detach().numpy(), sk.weights_, atol=1e-5)
    assert state.best_epoch == 1


def test_refit_matches_the_aggregate_posterior_of_two_separated_clusters():
    """Two clusters of posteriors: means spread with variance 0.04 around ±3, each posterior with
    variance 0.25. The aggregate posterior of a cluster has variance 0.04 + 0.25 per dimension; a fit
    to the means alone would give 0.04, far narrower than the posteriors the component must cover."""
    from src.priors import GaussianMixture

    g = torch.Generator().manual_seed(0)
    n, d = 4000, 3
    centre = torch.where(torch.arange(n) < n // 2, 3.0, -3.0)[:, None].expand(n, d)
    codes = centre + 0.2 * torch.randn(n, d, generator=g)
    prior = GaussianMixture(2, d, learned_weights=True)
    prior.fit_to_codes(codes, torch.full((n, d), 0.25), seed=0)
    logits, mu, logvar = prior.components()
    order = torch.argsort(mu[:, 0])
    torch.testing.assert_close(mu[order], torch.tensor([[-3.0] * d, [3.0] * d]), atol=0.03, rtol=0)
    torch.testing.assert_close(logvar.exp(), torch.full((2, d), 0.29), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.softmax(logits, 0), torch.tensor([0.5, 0.5]), atol=1e-3, rtol=0)
    prior.fit_to_codes(codes, None, seed=0)  # means only: the within-cluster spread of the means
    torch.testing.assert_close(prior.components()[2].exp(), torch.full((2, d), 0.04), atol=0.01, rtol=0)


def test_kmeans_refit_happens_through_the_config(compose, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="src.train")
    cfg = compose("prior=gmm", "prior.init=kmeans", "prior.kmeans_epoch=1", "prior.kmeans_samples=300")
    run_experiment(cfg, tmp_path / "kmeans")
    assert any("refitted" in r.getMessage() for r in caplog.records)
    caplog.clear()
    run_experiment(compose("prior=gmm", "prior.init=random", "prior.kmeans_epoch=1"), tmp_path / "random")
    assert not any("refitted" in r.getMessage() for r in caplog.records)


# --- KL: closed form vs Monte Carlo ---------------------------------------------------------------


def test_kl_closed_form_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(6, 5, generator=g, dtype=torch.float64)
    logvar = torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.7
    n = 200_000
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, 6, 5, generator=g, dtype=torch.float64)
    zeros = torch.zeros(1, 5, dtype=torch.float64)
    mc = kl_monte_carlo(z, mu, logvar, None, zeros, zeros)  # [n, 6]
    closed = kl_standard_normal(mu, logvar)
    sem = mc.std(0) / math.sqrt(n)
    assert torch.all((mc.mean(0) - closed).abs() < 4 * sem + 1e-9), (mc.mean(0), closed, sem)
    assert torch.all(closed > 0)


def test_vae_standard_closed_form_kl_equals_the_expected_monte_carlo_kl_of_the_model(compose, digits):
    """vae+standard uses the closed form; vae+gmm with one N(0, I) component uses one-sample Monte
    Carlo. With the same encoder, the Monte-Carlo regulariser averages to the closed form."""
    closed_model = built(compose("model=vae", "prior=standard"), digits)
    mc_model = built(compose("model=vae", "prior=gmm", "prior.K=1"), digits)
    mc_model.encoder.load_state_dict(closed_model.encoder.state_dict())
    with torch.no_grad():
        mc_model.prior.mu.zero_()
        mc_model.prior.raw_logvar.zero_()
        x = digits.val.x[:8]
        mu, logvar = closed_model.encode(x)
        closed = closed_model.regulariser(mu, logvar, mu)  # z is ignored by the closed form
        torch.manual_seed(0)
        draws = torch.stack(
            [mc_model.regulariser(mu, logvar, closed_model.reparameterise(mu, logvar)) for _ in range(4000)]
        )
    assert torch.allclose(closed, kl_standard_normal(mu, logvar))
    sem = draws.std(0) / math.sqrt(draws.shape[0])
    assert torch.all((draws.mean(0) - closed).abs() < 4 * sem + 1e-4), (draws.mean(0), closed, sem)


# --- sampling and component assignment --------------------------------------------------------------


def _separated_gmm(K=4, D=2, logits=None) -> GaussianMixture:
    prior = GaussianMixture(K, D, learned_weights=logits is not None)
    with torch.no_grad():
        prior.mu.copy_(torch.arange(K, dtype=torch.float32)[:, None] * 10.0 + torch.zeros(K, D))
        prior.raw_logvar.fill_(-6.0)
        if logits is not None:
            prior.logits.copy_(torch.as_tensor(logits, dtype=torch.float32))
    return prior


def test_prior_sampling_picks_one_component_per_sample():
    prior = _separated_gmm()
    n = 4000
    z, k = prior.sample(n, generator=torch.Generator().manual_seed(0))
    assert z.shape == (n, 2) and k.shape == (n,) and k.dtype == torch.int64
    assert k.min() >= 0 and k.max() < 4
    # Each z lies next to the mean of the component it says it came from (σ = e^-3 ≈ 0.05, means 10 apart).
    nearest = torch.cdist(z, prior.mu).argmin(1)
    assert torch.equal(nearest, k)
    assert (z - prior.mu[k]).abs().max() < 0.5
    counts = torch.bincount(k, minlength=4).float()
    assert torch.all((counts - n / 4).abs() < 5 * math.sqrt(n * 0.25 * 0.75))  # uniform weights

    # Learned weights are followed: π ∝ (1, 3, ~0, ~0).
    skewed = _separated_gmm(logits=[0.0, math.log(3.0), -30.0, -30.0])
    _, k = skewed.sample(n, generator=torch.Generator().manual_seed(1))
    assert set(k.tolist()) == {0, 1}
    assert abs((k == 1).float().mean().item() - 0.75) < 5 * math.sqrt(0.75 * 0.25 / n)

    # An explicit component is respected; the same generator seed gives the same draws.
    comp = torch.tensor([3, 0, 2, 2])
    z, k = prior.sample(4, component=comp, generator=torch.Generator().manual_seed(2))
    assert torch.equal(k, comp) and torch.equal(torch.cdist(z, prior.mu).argmin(1), comp)
    z2, _ = prior.sample(4, component=comp, generator=torch.Generator().manual_seed(2))
    assert torch.equal(z, z2)


@pytest.mark.parametrize("prior", ["standard", "gmm", "vamp", "net"])
def test_model_samples_are_images_with_valid_components(prior, compose, digits):
    cfg = compose(f"prior={prior}", *(["prior.K=7"] if prior != "standard" else []))
    model = built(cfg, digits)
    imgs, k = model.sample(30, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (30, 1, 8, 8)
    assert imgs.min() >= 0 and imgs.max() <= 1 and torch.isfinite(imgs).all()
    assert k.shape == (30,) and k.min() >= 0 and k.max() < model.prior.K
    if model.prior.K > 1:
        assert len(k.unique()) > 1  # 30 draws from 7 equally weighted components


def test_assign_components_returns_the_matching_component(compose, digits):
    cfg = compose("prior=gmm", "prior.K=5")
    model = built(cfg, digits)
    x = digits.test.x[:5]
    with torch.no_grad():  # put component k exactly on the posterior mean of image k, tiny variances
        model.prior.mu.copy_(model.encode(x)[0])
        model.prior.raw_logvar.fill_(-6.0)
    got = evaluate.assign_components(model, x, batch=2)
    assert got.dtype.kind == "i" and got.shape == (5,)
    np.testing.assert_array_equal(got, np.arange(5))
    np.testing.assert_array_equal(model.assign_components(x).numpy(), np.arange(5))


@pytest.mark.parametrize("prior", ["gmm", "vamp", "net"])
def test_assign_components_gives_valid_ids_on_the_test_set(prior, compose, digits):
    model = built(compose(f"prior={prior}", "prior.K=12"), digits)
    got = evaluate.assign_components(model, digits.test.x, batch=100)
    assert got.shape == (len(digits.test.x),)
    assert got.dtype.kind == "i" and got.min() >= 0 and got.max() < 12
    np.testing.assert_array_equal(got, evaluate.assign_components(model, digits.test.x, batch=1000))


@pytest.mark.parametrize("model_name", ["vae", "csrae"])
def test_vamp_encodes_batch_and_pseudo_inputs_in_one_call(model_name, compose, digits):
    cfg = compose(f"model={model_name}", "prior=vamp", "prior.K=7")
    model = build_model(cfg.model, cfg.prior, digits.image_shape).double()
    x = digits.train.x[:16].double()
    calls = []
    hook = model.encoder.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    torch.manual_seed(0)
    terms = model.loss_terms(x)
    hook.remove()
    assert calls == [16 + 7]
    # the same numbers as encoding x and the pseudo-inputs separately
    torch.manual_seed(0)
    mu, logvar = model.encode(x)
    z = model.reparameterise(mu, logvar)
    torch.testing.assert_close(terms.recon, -model.log_likelihood(x, model.decode(z)), rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(terms.reg, model.regulariser(mu, logvar, z), rtol=1e-10, atol=1e-9)


def test_every_prior_file_names_a_registered_class_that_builds_from_its_config():
    """A prior is a class in src.priors.PRIORS and a file in conf/prior/: nothing else names it."""
    from helpers import CONF, compose_config

    from src.priors import PRIORS, build_prior
    from src.schema import PriorName

    files = {f.stem for f in (CONF / "prior").glob("*.yaml")}
    assert files == set(PRIORS) == {n.value for n in PriorName}
    for name, cls in PRIORS.items():
        prior = build_prior(compose_config(f"prior={name}").prior, latent_dim=4, image_shape=(1, 8, 8))
        assert type(prior) is cls and prior.latent_dim == 4
