"""Tests for src/divergences.py: the closed-form Cauchy-Schwarz divergence and friends (docs/MATH.md).

Everything is checked in float64 against closed forms, numerical integration (scipy.integrate.quad in
1-D, a dense grid in 2-D) and Monte Carlo (D=3), plus the float32 robustness and gradient checks.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import logsumexp as np_logsumexp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.divergences import (  # noqa: E402
    component_log_responsibilities,
    cs_divergence,
    cs_divergence_mixtures,
    kl_monte_carlo,
    kl_standard_normal,
    log_gaussian_overlap,
    log_gaussian_self_integral,
    log_mixture_cross_integral,
    log_mixture_density,
    log_mixture_self_integral,
)

torch.set_num_threads(1)

F64 = torch.float64


# ----------------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------------


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_mixture(g: torch.Generator, k: int, d: int, spread: float = 2.0, dtype=F64):
    logits = torch.randn(k, generator=g, dtype=dtype)
    mu = spread * torch.randn(k, d, generator=g, dtype=dtype)
    logvar = torch.empty(k, d, dtype=dtype).uniform_(-1.5, 1.0, generator=g)
    return logits, mu, logvar


def np_mixture_logpdf(x: np.ndarray, logits, mu, logvar) -> np.ndarray:
    """log density of a diagonal mixture at points x [N, D] (numpy, independent of the module)."""
    mu = np.asarray(mu, dtype=np.float64)
    var = np.exp(np.asarray(logvar, dtype=np.float64))
    k = mu.shape[0]
    if logits is None:
        lw = np.full(k, -math.log(k))
    else:
        logits = np.asarray(logits, dtype=np.float64)
        lw = logits - np_logsumexp(logits)
    diff = x[:, None, :] - mu[None, :, :]
    comp = -0.5 * (np.log(2 * np.pi * var)[None] + diff**2 / var[None]).sum(-1)
    return np_logsumexp(lw[None, :] + comp, axis=1)


def cs_from_integrals(log_qp: float, log_qq: float, log_pp: float) -> float:
    return -log_qp + 0.5 * log_qq + 0.5 * log_pp


def quad_log_integral(f, centers) -> float:
    lo, hi = min(centers) - 40.0, max(centers) + 40.0
    val, _ = integrate.quad(f, lo, hi, points=sorted(centers), limit=400, epsabs=0.0, epsrel=1e-12)
    return math.log(val)


# ----------------------------------------------------------------------------------------------------------------------
# D_CS(p, p) = 0, symmetry, non-negativity, permutation invariance
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k,d,seed", [(1, 1, 0), (3, 2, 1), (5, 7, 2), (12, 4, 3)])
def test_mixture_self_divergence_is_zero(k, d, seed):
    logits, mu, logvar = random_mixture(gen(seed), k, d)
    val = cs_divergence_mixtures(logits, mu, logvar, logits, mu, logvar)
    assert val.shape == ()
    assert abs(val.item()) < 1e-12
    val_uniform = cs_divergence_mixtures(None, mu, logvar, None, mu, logvar)
    assert abs(val_uniform.item()) < 1e-12


def test_gaussian_vs_itself_as_k1_mixture_is_zero():
    g = gen(10)
    for d in (1, 3, 16):
        mu = 3.0 * torch.randn(5, d, generator=g, dtype=F64)
        logvar = torch.empty(5, d, dtype=F64).uniform_(-6.0, 2.0, generator=g)
        for b in range(5):
            val = cs_divergence(mu[b : b + 1], logvar[b : b + 1], mu[b : b + 1], logvar[b : b + 1])
            assert val.shape == (1,)
            assert abs(val.item()) < 1e-11
            val_logit = cs_divergence(
                mu[b : b + 1], logvar[b : b + 1], mu[b : b + 1], logvar[b : b + 1], torch.tensor([0.7], dtype=F64)
            )
            assert abs(val_logit.item()) < 1e-11
        # and D_CS(q_b || q_c) > 0 for b != c
        off = cs_divergence(mu[:1].expand(4, d), logvar[:1].expand(4, d), mu[1:2], logvar[1:2])
        assert (off > 1e-3).all()


def test_cs_divergence_agrees_with_mixture_version_per_row():
    g = gen(11)
    logits, pmu, plogvar = random_mixture(g, 4, 3)
    mu = torch.randn(6, 3, generator=g, dtype=F64)
    logvar = torch.randn(6, 3, generator=g, dtype=F64).clamp(-6, 2)
    batch = cs_divergence(mu, logvar, pmu, plogvar, logits)
    assert batch.shape == (6,)
    for b in range(6):
        ref = cs_divergence_mixtures(None, mu[b : b + 1], logvar[b : b + 1], logits, pmu, plogvar)
        torch.testing.assert_close(batch[b], ref, rtol=0, atol=1e-12)
        # weights of the one-component "mixture" are irrelevant
        ref2 = cs_divergence_mixtures(
            torch.tensor([3.0], dtype=F64), mu[b : b + 1], logvar[b : b + 1], logits, pmu, plogvar
        )
        torch.testing.assert_close(batch[b], ref2, rtol=0, atol=1e-12)


def test_mixture_divergence_is_symmetric():
    g = gen(20)
    for _ in range(20):
        ka, kb = torch.randint(1, 6, (2,), generator=g).tolist()
        d = int(torch.randint(1, 5, (1,), generator=g))
        a = random_mixture(g, ka, d)
        b = random_mixture(g, kb, d)
        ab = cs_divergence_mixtures(*a, *b)
        ba = cs_divergence_mixtures(*b, *a)
        torch.testing.assert_close(ab, ba, rtol=1e-12, atol=1e-12)
    # the mixture-vs-mixture function is also symmetric for the single-Gaussian case used by cs_divergence
    a = random_mixture(g, 1, 3)
    b = random_mixture(g, 4, 3)
    q_vs_p = cs_divergence(a[1], a[2], b[1], b[2], b[0])
    p_vs_q = cs_divergence_mixtures(*b, None, a[1], a[2])
    torch.testing.assert_close(q_vs_p[0], p_vs_q, rtol=1e-12, atol=1e-12)


def test_nonnegative_over_random_draws():
    g = gen(30)
    worst_mix, worst_q = math.inf, math.inf
    for i in range(200):
        d = int(torch.randint(1, 9, (1,), generator=g))
        ka, kb = torch.randint(1, 8, (2,), generator=g).tolist()
        spread = [0.0, 0.1, 1.0, 5.0][i % 4]
        a = random_mixture(g, ka, d, spread=spread)
        b = random_mixture(g, kb, d, spread=spread)
        worst_mix = min(worst_mix, cs_divergence_mixtures(*a, *b).item())
        mu = spread * torch.randn(8, d, generator=g, dtype=F64)
        logvar = torch.empty(8, d, dtype=F64).uniform_(-6.0, 2.0, generator=g)
        worst_q = min(worst_q, cs_divergence(mu, logvar, b[1], b[2], b[0]).min().item())
    assert worst_mix >= -1e-10
    assert worst_q >= -1e-10


def test_invariant_to_permuting_prior_components():
    g = gen(40)
    logits, pmu, plogvar = random_mixture(g, 7, 4)
    logits = 2.0 * logits  # clearly non-uniform weights
    mu = torch.randn(5, 4, generator=g, dtype=F64)
    logvar = torch.randn(5, 4, generator=g, dtype=F64).clamp(-6, 2)
    qa = random_mixture(g, 3, 4)
    base = cs_divergence(mu, logvar, pmu, plogvar, logits)
    base_mix = cs_divergence_mixtures(*qa, logits, pmu, plogvar)
    for s in range(5):
        perm = torch.randperm(7, generator=gen(100 + s))
        out = cs_divergence(mu, logvar, pmu[perm], plogvar[perm], logits[perm])
        torch.testing.assert_close(out, base, rtol=1e-12, atol=1e-12)
        perm_a = torch.randperm(3, generator=gen(200 + s))
        out_mix = cs_divergence_mixtures(
            qa[0][perm_a], qa[1][perm_a], qa[2][perm_a], logits[perm], pmu[perm], plogvar[perm]
        )
        torch.testing.assert_close(out_mix, base_mix, rtol=1e-12, atol=1e-12)
    # and a permutation that is NOT applied consistently to the logits does change the value
    perm = torch.arange(6, -1, -1)
    inconsistent = cs_divergence(mu, logvar, pmu[perm], plogvar[perm], logits)
    assert (inconsistent - base).abs().max() > 1e-6


# ----------------------------------------------------------------------------------------------------------------------
# closed form and uniform weights
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", [0.05, 0.3, 0.9, 1.0, 1.7, 4.0, 20.0])
def test_1d_closed_form(s):
    mu = torch.zeros(1, 1, dtype=F64)
    logvar = torch.full((1, 1), 2 * math.log(s), dtype=F64)
    pmu = torch.zeros(1, 1, dtype=F64)
    plogvar = torch.zeros(1, 1, dtype=F64)
    expected = 0.5 * math.log((s + 1.0 / s) / 2.0)
    got = cs_divergence(mu, logvar, pmu, plogvar)
    assert got.item() == pytest.approx(expected, rel=1e-12, abs=1e-14)
    got_mix = cs_divergence_mixtures(None, mu[0:1], logvar[0:1], None, pmu, plogvar)
    assert got_mix.item() == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_none_logits_equal_zero_logits_and_shift_invariance():
    g = gen(50)
    _, pmu, plogvar = random_mixture(g, 6, 3)
    mu = torch.randn(4, 3, generator=g, dtype=F64)
    logvar = torch.randn(4, 3, generator=g, dtype=F64).clamp(-6, 2)
    a = cs_divergence(mu, logvar, pmu, plogvar, None)
    b = cs_divergence(mu, logvar, pmu, plogvar, torch.zeros(6, dtype=F64))
    c = cs_divergence(mu, logvar, pmu, plogvar, torch.full((6,), -3.2, dtype=F64))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(a, c, rtol=0, atol=1e-12)
    qa = random_mixture(g, 2, 3)
    m1 = cs_divergence_mixtures(None, qa[1], qa[2], None, pmu, plogvar)
    m2 = cs_divergence_mixtures(torch.zeros(2, dtype=F64), qa[1], qa[2], torch.zeros(6, dtype=F64), pmu, plogvar)
    torch.testing.assert_close(m1, m2, rtol=0, atol=1e-12)
    # uniform weights are not the same as learned non-uniform ones
    m3 = cs_divergence_mixtures(None, qa[1], qa[2], 3.0 * torch.randn(6, generator=g, dtype=F64), pmu, plogvar)
    assert abs((m3 - m1).item()) > 1e-6


@pytest.mark.parametrize("k", [2, 5, 50])
def test_no_stray_log_k_term(k):
    g = gen(60 + k)
    pmu1 = torch.randn(1, 3, generator=g, dtype=F64)
    plogvar1 = torch.randn(1, 3, generator=g, dtype=F64).clamp(-2, 1)
    mu = torch.randn(5, 3, generator=g, dtype=F64)
    logvar = torch.randn(5, 3, generator=g, dtype=F64).clamp(-6, 2)
    one = cs_divergence(mu, logvar, pmu1, plogvar1)
    copies = cs_divergence(mu, logvar, pmu1.expand(k, 3), plogvar1.expand(k, 3))
    torch.testing.assert_close(copies, one, rtol=0, atol=1e-11)
    # any weights over identical copies give the same distribution
    weighted = cs_divergence(
        mu, logvar, pmu1.expand(k, 3), plogvar1.expand(k, 3), torch.randn(k, generator=g, dtype=F64)
    )
    torch.testing.assert_close(weighted, one, rtol=0, atol=1e-11)
    # mixture-vs-mixture with K copies on both sides: still zero, still equal to the K=1 value
    qa = random_mixture(g, 1, 3)
    m_one = cs_divergence_mixtures(None, qa[1], qa[2], None, pmu1, plogvar1)
    m_copies = cs_divergence_mixtures(
        None, qa[1].expand(k, 3), qa[2].expand(k, 3), None, pmu1.expand(k, 3), plogvar1.expand(k, 3)
    )
    torch.testing.assert_close(m_copies, m_one, rtol=0, atol=1e-11)
    self_copies = cs_divergence_mixtures(None, pmu1.expand(k, 3), plogvar1.expand(k, 3), None, pmu1, plogvar1)
    assert abs(self_copies.item()) < 1e-11


# ----------------------------------------------------------------------------------------------------------------------
# the erratum: (4π)^{D/2}, not (2π)^{D/2}, in the self term
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,s", [(0.0, 1.0), (1.3, 0.2), (-2.0, 3.5)])
def test_self_integral_matches_quad_1d(m, s):
    logvar = torch.tensor([[2 * math.log(s)]], dtype=F64)
    got = log_gaussian_self_integral(logvar)
    assert got.shape == (1,)

    def sq(x):
        return (math.exp(-0.5 * (x - m) ** 2 / s**2) / math.sqrt(2 * math.pi * s**2)) ** 2

    numeric = quad_log_integral(sq, [m])
    assert got.item() == pytest.approx(numeric, abs=1e-9)
    assert got.item() == pytest.approx(-0.5 * math.log(4 * math.pi) - math.log(s), abs=1e-12)
    # the printed (2π) constant would be off by ½ log 2 per dimension
    assert abs(got.item() - (-0.5 * math.log(2 * math.pi) - math.log(s))) > 0.3


def test_self_integral_formula_and_overlap_agree():
    g = gen(70)
    for d in (1, 2, 5, 40):
        mu = 4.0 * torch.randn(3, d, generator=g, dtype=F64)
        logvar = torch.empty(3, d, dtype=F64).uniform_(-6.0, 2.0, generator=g)
        got = log_gaussian_self_integral(logvar)
        formula = -(d / 2) * math.log(4 * math.pi) - 0.5 * logvar.sum(-1)
        torch.testing.assert_close(got, formula, rtol=0, atol=1e-10)
        torch.testing.assert_close(got, log_gaussian_overlap(mu, logvar, mu, logvar), rtol=0, atol=1e-10)
        # single-component mixture self integral is the same quantity
        for b in range(3):
            torch.testing.assert_close(
                log_mixture_self_integral(None, mu[b : b + 1], logvar[b : b + 1]), got[b], rtol=0, atol=1e-10
            )


def test_self_integral_matches_grid_2d():
    mu = np.array([0.4, -0.7])
    sd = np.array([0.6, 1.3])
    xs = np.linspace(-12, 12, 1201)
    dx = xs[1] - xs[0]
    xx, yy = np.meshgrid(xs, xs, indexing="ij")
    dens = np.exp(-0.5 * ((xx - mu[0]) / sd[0]) ** 2 - 0.5 * ((yy - mu[1]) / sd[1]) ** 2) / (2 * np.pi * sd[0] * sd[1])
    numeric = math.log((dens**2).sum() * dx * dx)
    got = log_gaussian_self_integral(torch.tensor(2 * np.log(sd), dtype=F64)).item()
    assert got == pytest.approx(numeric, abs=1e-8)


# ----------------------------------------------------------------------------------------------------------------------
# numerical integration (1-D quad, 2-D grid) and Monte Carlo (D=3)
# ----------------------------------------------------------------------------------------------------------------------


MIX3_1D = (
    np.array([0.8, -0.4, 0.1]),  # logits (non-uniform)
    np.array([[-2.0], [0.5], [3.0]]),
    np.log(np.array([[0.3], [1.2], [0.7]]) ** 2),
)


def _t(*arrays):
    return tuple(torch.tensor(a, dtype=F64) for a in arrays)


def test_1d_gaussian_vs_mixture_matches_quad():
    logits, pmu, plogvar = MIX3_1D
    for qm, qs in [(0.0, 1.0), (1.1, 0.4), (-3.0, 2.5)]:
        qmu, qlogvar = np.array([[qm]]), np.array([[2 * math.log(qs)]])

        def q(x, qmu=qmu, qlogvar=qlogvar):
            return float(np.exp(np_mixture_logpdf(np.array([[x]]), None, qmu, qlogvar))[0])

        def p(x):
            return float(np.exp(np_mixture_logpdf(np.array([[x]]), logits, pmu, plogvar))[0])

        centers = [qm, *pmu[:, 0].tolist()]
        log_qp = quad_log_integral(lambda x: q(x) * p(x), centers)
        log_qq = quad_log_integral(lambda x: q(x) ** 2, centers)
        log_pp = quad_log_integral(lambda x: p(x) ** 2, centers)
        expected = cs_from_integrals(log_qp, log_qq, log_pp)

        tl, tm, tv = _t(logits, pmu, plogvar)
        got = cs_divergence(*_t(qmu, qlogvar), tm, tv, tl)
        assert got.item() == pytest.approx(expected, abs=1e-8)
        # individual integrals too
        assert log_mixture_self_integral(tl, tm, tv).item() == pytest.approx(log_pp, abs=1e-8)
        assert log_mixture_cross_integral(None, *_t(qmu, qlogvar), tl, tm, tv).item() == pytest.approx(log_qp, abs=1e-8)


def test_1d_mixture_vs_mixture_matches_quad():
    logits_b, mu_b, logvar_b = MIX3_1D
    logits_a = np.array([-1.0, 1.5])
    mu_a = np.array([[0.0], [1.5]])
    logvar_a = np.log(np.array([[2.0], [0.25]]) ** 2)

    def pa(x):
        return float(np.exp(np_mixture_logpdf(np.array([[x]]), logits_a, mu_a, logvar_a))[0])

    def pb(x):
        return float(np.exp(np_mixture_logpdf(np.array([[x]]), logits_b, mu_b, logvar_b))[0])

    centers = [*mu_a[:, 0].tolist(), *mu_b[:, 0].tolist()]
    expected = cs_from_integrals(
        quad_log_integral(lambda x: pa(x) * pb(x), centers),
        quad_log_integral(lambda x: pa(x) ** 2, centers),
        quad_log_integral(lambda x: pb(x) ** 2, centers),
    )
    got = cs_divergence_mixtures(*_t(logits_a, mu_a, logvar_a), *_t(logits_b, mu_b, logvar_b))
    assert got.item() == pytest.approx(expected, abs=1e-8)
    assert expected > 0.01  # the case is not degenerate


def test_1d_integrals_with_uniform_weights_match_quad():
    # logits=None must mean weights 1/K inside each integral (the log K terms only cancel inside D_CS)
    _, pmu, plogvar = MIX3_1D

    def p(x):
        return float(np.exp(np_mixture_logpdf(np.array([[x]]), None, pmu, plogvar))[0])

    qmu, qlogvar = np.array([[0.7]]), np.array([[0.0]])

    def q(x):
        return float(np.exp(np_mixture_logpdf(np.array([[x]]), None, qmu, qlogvar))[0])

    centers = [0.7, *pmu[:, 0].tolist()]
    tm, tv = _t(pmu, plogvar)
    assert log_mixture_self_integral(None, tm, tv).item() == pytest.approx(
        quad_log_integral(lambda x: p(x) ** 2, centers), abs=1e-8
    )
    assert log_mixture_cross_integral(None, *_t(qmu, qlogvar), None, tm, tv).item() == pytest.approx(
        quad_log_integral(lambda x: q(x) * p(x), centers), abs=1e-8
    )


def _grid_2d(half_width=14.0, n=1001):
    xs = np.linspace(-half_width, half_width, n)
    xx, yy = np.meshgrid(xs, xs, indexing="ij")
    pts = np.stack([xx.ravel(), yy.ravel()], axis=1)
    return pts, (xs[1] - xs[0]) ** 2


def _grid_cs(pts, cell, a, b):
    la = np_mixture_logpdf(pts, *a)
    lb = np_mixture_logpdf(pts, *b)
    log_cell = math.log(cell)
    return cs_from_integrals(
        np_logsumexp(la + lb) + log_cell, np_logsumexp(2 * la) + log_cell, np_logsumexp(2 * lb) + log_cell
    )


def test_2d_gaussian_vs_mixture_and_mixture_vs_mixture_match_grid():
    pts, cell = _grid_2d()
    prior = (
        np.array([1.0, 0.0, -0.8]),
        np.array([[-1.5, 0.5], [1.0, -1.0], [2.0, 2.0]]),
        np.log(np.array([[0.5, 1.0], [1.2, 0.4], [0.8, 0.8]]) ** 2),
    )
    q = (None, np.array([[0.3, -0.2]]), np.log(np.array([[0.9, 1.4]]) ** 2))
    expected_q = _grid_cs(pts, cell, q, prior)
    got_q = cs_divergence(*_t(q[1], q[2]), *_t(prior[1], prior[2]), torch.tensor(prior[0], dtype=F64))
    assert got_q.item() == pytest.approx(expected_q, abs=1e-8)

    mix_a = (
        np.array([0.3, -0.3]),
        np.array([[0.0, 1.0], [-2.0, -1.0]]),
        np.log(np.array([[1.0, 0.5], [0.7, 1.5]]) ** 2),
    )
    expected_m = _grid_cs(pts, cell, mix_a, prior)
    got_m = cs_divergence_mixtures(*_t(*mix_a), *_t(*prior))
    assert got_m.item() == pytest.approx(expected_m, abs=1e-8)
    assert expected_q > 0.01 and expected_m > 0.01


def _sample_mixture(g, n, logits, mu, logvar):
    k = mu.shape[0]
    probs = torch.softmax(logits, 0) if logits is not None else torch.full((k,), 1.0 / k, dtype=mu.dtype)
    idx = torch.multinomial(probs, n, replacement=True, generator=g)
    eps = torch.randn(n, mu.shape[1], generator=g, dtype=mu.dtype)
    return mu[idx] + torch.exp(0.5 * logvar[idx]) * eps


def _mc_log_mean(log_vals: torch.Tensor):
    """log E[exp(v)] and its standard error (delta method)."""
    n = log_vals.numel()
    m = log_vals.max()
    w = torch.exp(log_vals - m)
    mean = w.mean()
    se = w.std() / math.sqrt(n) / mean
    return (m + torch.log(mean)).item(), se.item()


def test_monte_carlo_d3():
    g = gen(80)
    d = 3
    p_logits = torch.tensor([0.5, -0.5, 0.0, 1.0], dtype=F64)
    p_mu = torch.randn(4, d, generator=g, dtype=F64)
    p_logvar = torch.empty(4, d, dtype=F64).uniform_(-0.5, 0.5, generator=g)
    q_mu = torch.tensor([[0.2, -0.3, 0.1]], dtype=F64)
    q_logvar = torch.tensor([[0.2, -0.2, 0.0]], dtype=F64)
    n = 200_000

    xq1 = _sample_mixture(g, n, None, q_mu, q_logvar)
    xq2 = _sample_mixture(g, n, None, q_mu, q_logvar)
    xp = _sample_mixture(g, n, p_logits, p_mu, p_logvar)
    log_qp, se_qp = _mc_log_mean(log_mixture_density(xq1, p_logits, p_mu, p_logvar))
    log_qq, se_qq = _mc_log_mean(log_mixture_density(xq2, None, q_mu, q_logvar))
    log_pp, se_pp = _mc_log_mean(log_mixture_density(xp, p_logits, p_mu, p_logvar))

    got = cs_divergence(q_mu, q_logvar, p_mu, p_logvar, p_logits).item()
    expected = cs_from_integrals(log_qp, log_qq, log_pp)
    se = math.sqrt(se_qp**2 + 0.25 * se_qq**2 + 0.25 * se_pp**2)
    assert se < 0.02  # the estimate is informative
    assert abs(got - expected) < 5 * se + 1e-6
    # each integral separately
    assert abs(log_mixture_cross_integral(None, q_mu, q_logvar, p_logits, p_mu, p_logvar).item() - log_qp) < 5 * se_qp
    assert abs(log_gaussian_self_integral(q_logvar).item() - log_qq) < 5 * se_qq
    assert abs(log_mixture_self_integral(p_logits, p_mu, p_logvar).item() - log_pp) < 5 * se_pp


# ----------------------------------------------------------------------------------------------------------------------
# float32 robustness
# ----------------------------------------------------------------------------------------------------------------------


def _finite_value_and_grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    assert torch.isfinite(out).all(), out
    out.sum().backward()
    for leaf in leaves:
        assert leaf.grad is not None
        assert torch.isfinite(leaf.grad).all(), leaf.grad
    return out.detach()


@pytest.mark.parametrize("lv", [-6.0, 0.0, 2.0])
def test_float32_far_apart_components(lv):
    d = 4
    f32 = torch.float32
    p_mu = torch.zeros(3, d, dtype=f32)
    p_mu[1, 0] = 60.0
    p_mu[2, 1] = -60.0
    p_logvar = torch.full((3, d), lv, dtype=f32)
    p_logits = torch.tensor([0.0, 1.0, -1.0], dtype=f32)
    mu = torch.zeros(3, d, dtype=f32)
    mu[0, 0] = 60.0
    mu[1, 0] = 120.0  # 60 away from the nearest component
    mu[2, 2] = 60.0
    logvar = torch.tensor([[-6.0] * d, [2.0] * d, [lv] * d], dtype=f32)

    out = _finite_value_and_grads(cs_divergence, mu, logvar, p_mu, p_logvar, p_logits)
    ref = cs_divergence(*(t.double() for t in (mu, logvar, p_mu, p_logvar, p_logits)))
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-3)

    # two mixtures with components 60 apart
    a_mu = torch.zeros(2, d, dtype=f32)
    a_mu[1, 3] = 60.0
    a_logvar = torch.tensor([[-6.0] * d, [2.0] * d], dtype=f32)
    a_logits = torch.tensor([0.3, -0.3], dtype=f32)
    out_m = _finite_value_and_grads(cs_divergence_mixtures, a_logits, a_mu, a_logvar, p_logits, p_mu, p_logvar)
    ref_m = cs_divergence_mixtures(*(t.double() for t in (a_logits, a_mu, a_logvar, p_logits, p_mu, p_logvar)))
    torch.testing.assert_close(out_m.double(), ref_m, rtol=1e-4, atol=1e-3)

    # D_CS(p, p) stays ~0 in float32 even with far-apart components
    self_val = cs_divergence_mixtures(p_logits, p_mu, p_logvar, p_logits, p_mu, p_logvar)
    assert abs(self_val.item()) < 1e-4


def test_float32_extreme_logvars_random():
    g = gen(90)
    f32 = torch.float32
    d = 8
    mu = 30.0 * torch.randn(16, d, generator=g)
    logvar = torch.where(torch.rand(16, d, generator=g) < 0.5, torch.tensor(-6.0), torch.tensor(2.0))
    p_mu = 30.0 * torch.randn(10, d, generator=g)
    p_logvar = torch.where(torch.rand(10, d, generator=g) < 0.5, torch.tensor(-6.0), torch.tensor(2.0))
    p_logits = torch.randn(10, generator=g)
    out = _finite_value_and_grads(cs_divergence, mu, logvar, p_mu, p_logvar, p_logits)
    assert out.dtype == f32
    ref = cs_divergence(*(t.double() for t in (mu, logvar, p_mu, p_logvar, p_logits)))
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-2)
    assert (out >= -1e-3).all()


# ----------------------------------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------------------------------


def test_gradcheck_cs_divergence():
    g = gen(100)
    inputs = (
        torch.randn(2, 3, generator=g, dtype=F64),
        0.5 * torch.randn(2, 3, generator=g, dtype=F64),
        torch.randn(3, 3, generator=g, dtype=F64),
        0.5 * torch.randn(3, 3, generator=g, dtype=F64),
        torch.randn(3, generator=g, dtype=F64),
    )
    inputs = tuple(t.requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(cs_divergence, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
    assert torch.autograd.gradcheck(
        lambda a, b, c, e: cs_divergence(a, b, c, e, None), inputs[:4], eps=1e-6, atol=1e-6, rtol=1e-5
    )


def test_gradcheck_cs_divergence_mixtures():
    g = gen(101)
    inputs = (
        torch.randn(2, generator=g, dtype=F64),
        torch.randn(2, 2, generator=g, dtype=F64),
        0.5 * torch.randn(2, 2, generator=g, dtype=F64),
        torch.randn(3, generator=g, dtype=F64),
        torch.randn(3, 2, generator=g, dtype=F64),
        0.5 * torch.randn(3, 2, generator=g, dtype=F64),
    )
    inputs = tuple(t.requires_grad_(True) for t in inputs)
    assert torch.autograd.gradcheck(cs_divergence_mixtures, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradient_zero_at_minimum_p_equals_q():
    # D_CS(q||q) = 0 is the global minimum: the gradient w.r.t. q's parameters vanishes there.
    g = gen(102)
    mu = torch.randn(1, 3, generator=g, dtype=F64, requires_grad=True)
    logvar = (0.3 * torch.randn(1, 3, generator=g, dtype=F64)).requires_grad_(True)
    out = cs_divergence(mu, logvar, mu.detach(), logvar.detach())
    out.sum().backward()
    assert mu.grad.abs().max() < 1e-10
    assert logvar.grad.abs().max() < 1e-10


# ----------------------------------------------------------------------------------------------------------------------
# KL helpers and mixture density
# ----------------------------------------------------------------------------------------------------------------------


def test_kl_standard_normal_matches_torch_distributions_and_mc():
    from torch.distributions import Independent, Normal, kl_divergence

    g = gen(110)
    mu = torch.randn(4, 5, generator=g, dtype=F64)
    logvar = torch.empty(4, 5, dtype=F64).uniform_(-3.0, 1.5, generator=g)
    got = kl_standard_normal(mu, logvar)
    assert got.shape == (4,)
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    p = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    torch.testing.assert_close(got, kl_divergence(q, p), rtol=1e-12, atol=1e-12)

    n = 100_000
    z = q.sample((n,))  # [n, 4, 5]
    log_ratio = q.log_prob(z) - p.log_prob(z)
    mc = log_ratio.mean(0)
    se = log_ratio.std(0) / math.sqrt(n)
    assert ((mc - got).abs() < 5 * se + 1e-9).all()
    # zero KL exactly at the prior
    assert kl_standard_normal(torch.zeros(2, 3, dtype=F64), torch.zeros(2, 3, dtype=F64)).abs().max() == 0


def test_kl_monte_carlo_matches_closed_form_for_standard_normal_prior():
    torch.manual_seed(111)
    g = gen(111)
    d = 4
    mu = torch.randn(3, d, generator=g, dtype=F64)
    logvar = torch.empty(3, d, dtype=F64).uniform_(-2.0, 1.0, generator=g)
    n = 100_000
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, 3, d, generator=g, dtype=F64)
    p_mu, p_logvar = torch.zeros(1, d, dtype=F64), torch.zeros(1, d, dtype=F64)
    per_sample = kl_monte_carlo(z, mu, logvar, None, p_mu, p_logvar)
    assert per_sample.shape == (n, 3)
    mc = per_sample.mean(0)
    se = per_sample.std(0) / math.sqrt(n)
    exact = kl_standard_normal(mu, logvar)
    assert ((mc - exact).abs() < 5 * se + 1e-9).all()
    # with logits given for the single component the result is the same
    torch.testing.assert_close(
        kl_monte_carlo(z[:10], mu, logvar, torch.tensor([2.0], dtype=F64), p_mu, p_logvar), per_sample[:10]
    )


def test_log_mixture_density_matches_mixture_same_family():
    from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

    g = gen(120)
    logits, mu, logvar = random_mixture(g, 5, 3)
    z = 3.0 * torch.randn(7, 2, 3, generator=g, dtype=F64)
    mix = MixtureSameFamily(Categorical(logits=logits), Independent(Normal(mu, torch.exp(0.5 * logvar)), 1))
    got = log_mixture_density(z, logits, mu, logvar)
    assert got.shape == (7, 2)
    torch.testing.assert_close(got, mix.log_prob(z), rtol=1e-12, atol=1e-12)
    mix_u = MixtureSameFamily(
        Categorical(logits=torch.zeros(5, dtype=F64)), Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    )
    torch.testing.assert_close(log_mixture_density(z, None, mu, logvar), mix_u.log_prob(z), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# clustering scores
# ----------------------------------------------------------------------------------------------------------------------


def test_component_log_responsibilities_shape_and_argmax():
    d = 2
    p_mu = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0], [0.0, -10.0], [0.0, 0.0]], dtype=F64)
    p_logvar = torch.zeros(5, d, dtype=F64)
    p_logits = torch.tensor([0.0, 0.5, -0.5, 0.2, 0.0], dtype=F64)
    target = torch.tensor([3, 0, 4, 1, 2, 2, 0])
    g = gen(130)
    mu = p_mu[target] + 0.5 * torch.randn(len(target), d, generator=g, dtype=F64)
    logvar = torch.full((len(target), d), -1.0, dtype=F64)
    resp = component_log_responsibilities(mu, logvar, p_logits, p_mu, p_logvar)
    assert resp.shape == (len(target), 5)
    assert torch.equal(resp.argmax(1), target)
    resp_u = component_log_responsibilities(mu, logvar, None, p_mu, p_logvar)
    assert resp_u.shape == (len(target), 5)
    assert torch.equal(resp_u.argmax(1), target)
    # the scores are the terms of D_CS's cross term: -LSE_k(scores) + ½ self terms = D_CS
    recon = (
        -torch.logsumexp(resp, dim=1)
        + 0.5 * log_mixture_self_integral(p_logits, p_mu, p_logvar)
        + 0.5 * log_gaussian_self_integral(logvar)
    )
    torch.testing.assert_close(recon, cs_divergence(mu, logvar, p_mu, p_logvar, p_logits), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# the fused pair sums (src/pair_sums.py, the default) against the broadcast reference
# ----------------------------------------------------------------------------------------------------------------------

from src import native, pair_sums  # noqa: E402
from src.divergences import reference_math  # noqa: E402


@pytest.fixture(params=["native", "tiles"])
def backend(request, monkeypatch):
    """The fused terms run by the compiled loops (src/native.py, the CPU default) or by the torch tiles."""
    monkeypatch.setattr(pair_sums, "USE_NATIVE", request.param == "native")
    return request.param


def test_native_loops_build_and_are_used_on_cpu():
    assert native.library() is not None, "the native mixture loops did not build (is a C++ compiler installed?)"
    x = torch.randn(3, 4, dtype=F64)
    assert pair_sums._native_chunk(x[0], (x,)) == 4
    with pair_sums.torch_tiles_only():
        assert pair_sums._native_chunk(x[0], (x,)) == 0
    assert pair_sums._native_chunk(x[0], (x,)) == 4  # switched back after the block


def test_mixed_dtypes_never_reach_the_native_loops():
    """The C code reads every buffer in one dtype: float32 logits beside float64 means gave a wrong value
    (16.13 instead of 14.35) with no error. Mixed dtypes go to the torch tiles, which promote."""
    g = gen(1400)
    mu, lv, logits, p_mu, p_lv = (t.detach() for t in _case(g, 4, 6, 32, "plain"))
    with reference_math():
        ref = cs_divergence(mu, lv, p_mu, p_lv, logits.float())
    got = cs_divergence(mu, lv, p_mu, p_lv, logits.float())
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    assert pair_sums._native_chunk(lv[0], (lv, p_lv), (mu, logits.float())) == 0
    with pytest.raises(ValueError, match="one dtype"):
        native.pairs(p_mu, p_lv.float(), logits, 0.0, False, 1)


def test_without_a_compiler_the_tiles_are_used(tmp_path):
    """No C++ compiler (or CSRAE_NATIVE=0): one warning, and the CS divergence still runs (torch tiles)."""
    import subprocess

    code = (
        "import torch; from src import native, pair_sums, divergences as dv; assert native.library() is None; "
        "x = torch.randn(3, 4, dtype=torch.float64); assert pair_sums._native_chunk(x[0], (x,)) == 0; "
        "print(float(dv.cs_divergence(x, x, x, x, None).sum()))"
    )
    for env in ({"CXX": str(tmp_path / "no-compiler")}, {"CSRAE_NATIVE": "0"}):
        p = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "CSRAE_CACHE_DIR": str(tmp_path / "cache"), **env},
            cwd=Path(__file__).resolve().parents[1],
        )
        assert p.returncode == 0, p.stderr
        assert math.isfinite(float(p.stdout.split()[-1]))
    assert not list((tmp_path / "cache").glob("*.so"))


def test_native_chunk_keeps_partial_products_in_double_range():
    # Each factor v_a + v_b lies in [exp(-spread), 2]; a partial product of n factors must stay normal.
    for spread in (0.0, 8.0, 43.0, 354.0):
        n = native.chunk(spread, 64)
        assert n >= 1 and math.exp(-spread) ** n > 2.3e-308 and 2.0**n < 1.7e308


def _case(g, b, k, d, kind):
    """Random posteriors [b, d] and a K-component mixture; kind picks the hard regime."""
    spread, lv_lo, lv_hi = {
        "plain": (2.0, -1.5, 1.0),
        "far": (60.0, -6.0, 2.0),
        "tiny": (0.5, -30.0, -20.0),
        "huge": (50.0, 15.0, 25.0),
        "mixed": (5.0, -12.0, 12.0),
    }[kind]
    logits = 2.0 * torch.randn(k, generator=g, dtype=F64)
    p_mu = spread * torch.randn(k, d, generator=g, dtype=F64)
    p_lv = torch.empty(k, d, dtype=F64).uniform_(lv_lo, lv_hi, generator=g)
    mu = spread * torch.randn(b, d, generator=g, dtype=F64)
    lv = torch.empty(b, d, dtype=F64).uniform_(lv_lo, lv_hi, generator=g)
    return [t.requires_grad_(True) for t in (mu, lv, logits, p_mu, p_lv)]


def _value_and_grads(fn, inputs, g):
    out = fn(*inputs)
    weights = torch.randn(out.shape, generator=g, dtype=F64)  # an arbitrary upstream gradient
    grads = torch.autograd.grad((out * weights).sum(), inputs, allow_unused=True)
    return out.detach(), grads


def _assert_rel(got, ref, what):
    scale = ref.abs().max().clamp_min(1e-300)
    err = ((got - ref).abs().max() / scale).item()
    assert err <= 1e-6, f"{what}: relative error {err:.2e}"


MIXTURE_TERMS = {
    "cs_divergence": lambda mu, lv, logits, p_mu, p_lv: cs_divergence(mu, lv, p_mu, p_lv, logits),
    "cs_uniform": lambda mu, lv, logits, p_mu, p_lv: cs_divergence(mu, lv, p_mu, p_lv, None),
    "self_integral": lambda mu, lv, logits, p_mu, p_lv: log_mixture_self_integral(logits, p_mu, p_lv),
    "cross_integral": lambda mu, lv, logits, p_mu, p_lv: log_mixture_cross_integral(None, mu, lv, logits, p_mu, p_lv),
    "mixtures": lambda mu, lv, logits, p_mu, p_lv: cs_divergence_mixtures(None, mu, lv, logits, p_mu, p_lv),
    "density": lambda mu, lv, logits, p_mu, p_lv: log_mixture_density(mu + torch.exp(0.5 * lv), logits, p_mu, p_lv),
}


@pytest.mark.parametrize(
    "b,k,d,kind",
    [
        (5, 1, 1, "plain"),
        (7, 13, 3, "plain"),
        (3, 40, 64, "plain"),
        (6, 30, 8, "far"),
        (4, 25, 16, "tiny"),
        (4, 25, 16, "huge"),
        (5, 50, 10, "mixed"),
        (2, 1000, 2, "plain"),
        (2, 700, 3, "far"),
    ],
)
@pytest.mark.parametrize("term", sorted(MIXTURE_TERMS))
def test_fused_matches_reference_values_and_gradients(term, b, k, d, kind, backend):
    g = gen(1000 + 7 * k + d)
    inputs = _case(g, b, k, d, kind)
    fn = MIXTURE_TERMS[term]
    got, got_grads = _value_and_grads(fn, inputs, gen(1))
    with reference_math():
        ref, ref_grads = _value_and_grads(fn, inputs, gen(1))
    _assert_rel(got, ref, "value")
    for name, a, r in zip(("mu", "logvar", "logits", "prior_mu", "prior_logvar"), got_grads, ref_grads):
        if r is None:  # the reference's graph does not reach it (K=1 self term): the gradient is zero
            assert a is None or a.abs().max() == 0, name
        else:
            _assert_rel(a, r, f"gradient w.r.t. {name}")


def test_fused_gradcheck(backend):
    g = gen(1100)
    mu, lv, logits, p_mu, p_lv = _case(g, 3, 4, 3, "plain")
    lw = torch.log_softmax(logits.detach(), 0).requires_grad_(True)
    z = mu.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *t: pair_sums.RowLSE.apply(*t), (mu, lv, lw, p_mu, p_lv))
    assert torch.autograd.gradcheck(lambda a, b, c, e: pair_sums.RowLSE.apply(a, None, b, c, e), (z, lw, p_mu, p_lv))
    assert torch.autograd.gradcheck(lambda a, b, c: pair_sums.PairLSE.apply(a, b, c, True), (lw, p_mu, p_lv))


def test_fused_terms_keep_no_pair_by_dimension_tensor_for_backward(backend):
    # What autograd saves for the backward pass of one CS step: nothing of size pairs x D, fused;
    # the reference keeps several (the reason the fused path exists).
    g = gen(1200)
    b, k, d = 6, 40, 16
    mu, lv, logits, p_mu, p_lv = _case(g, b, k, d, "plain")

    def largest_saved() -> int:
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            loss = cs_divergence(mu, lv, p_mu, p_lv, logits).sum() + log_mixture_density(mu, logits, p_mu, p_lv).sum()
        loss.backward()
        return max(sizes)

    assert largest_saved() <= k * k
    with reference_math():
        assert largest_saved() >= b * k * d


def test_fused_is_the_default_and_falls_back_beyond_its_range():
    g = gen(1300)
    mu, lv, logits, p_mu, p_lv = (t.detach() for t in _case(g, 3, 5, 2, "plain"))
    assert pair_sums.spread_ok(lv, p_lv)
    calls = []
    original = pair_sums.RowLSE.apply
    try:
        pair_sums.RowLSE.apply = lambda *a: calls.append(1) or original(*a)
        cs_divergence(mu, lv, p_mu, p_lv, logits)
        assert calls, "the fused kernel is not the default"
        calls.clear()
        # log-variances 200 nats apart in float32: exp(logvar - max) would underflow, so the reference runs
        wide = p_lv.float().clone()
        wide[0, 0] = -100.0
        wide[1, 0] = 100.0
        assert not pair_sums.spread_ok(wide)
        out = cs_divergence(mu.float(), lv.float(), p_mu.float(), wide, logits.float())
        assert not calls
        assert torch.isfinite(out).all()
    finally:
        pair_sums.RowLSE.apply = original
