"""Closed-form divergences between diagonal Gaussians and Gaussian mixtures.

Pure tensor code: no Hydra, no modules, no state. Everything is computed in log space.

Notation: a diagonal Gaussian is (mu, logvar) with tensors of shape [..., D]; a mixture is
(logits, mu, logvar) with logits [K] (None = uniform weights), mu and logvar [K, D].

The Cauchy-Schwarz divergence (Kampa, Hasanbelliu & Principe 2011) is

    D_CS(q||p) = -log ∫qp + ½ log ∫q² + ½ log ∫p²,

and every integral of a product of two Gaussians is a Gaussian density:
log ∫ N(x|a,A) N(x|b,B) dx = log N(a | b, A+B). Kampa et al. (eq. 3) print the self term's
normaliser as (2π)^{D/2}; the correct one is (4π)^{D/2} (∫N(x|μ,Σ)² dx = N(μ|μ,2Σ)). Using the
full double sum of log N(μ_k|μ_k', Σ_k+Σ_k') below gets this right by construction.

Two implementations of the sums over component pairs give the same values and gradients (to rounding):
the fused one in src/pair_sums.py (the default: tiled, analytic gradient, no [B, K, D] or [K, K, D]
tensor kept for the backward pass) and the broadcast reference written out below, which
`reference_math()` selects (tests and benchmarks compare the two).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from src import pair_sums

LOG_2PI = math.log(2.0 * math.pi)
_FUSED = True


@contextlib.contextmanager
def reference_math():
    """Within the block the mixture terms use the broadcast reference instead of src/pair_sums.py."""
    global _FUSED
    saved, _FUSED = _FUSED, False
    try:
        yield
    finally:
        _FUSED = saved


def _fused(*logvars: Tensor) -> bool:
    # Under torch.compile (trainer.compile=true) the broadcast formulas go to the compiler, which fuses
    # them itself; the tiled kernels' Python loops and range check would only break its graph.
    return _FUSED and not torch.compiler.is_compiling() and pair_sums.spread_ok(*logvars)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def log_normal(x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(x | mu, diag exp(logvar)), summed over the last dimension (broadcasts)."""
    return -0.5 * (LOG_2PI + logvar + (x - mu).pow(2) * torch.exp(-logvar)).sum(-1)


def log_gaussian_overlap(mu_a: Tensor, logvar_a: Tensor, mu_b: Tensor, logvar_b: Tensor) -> Tensor:
    """log ∫ N(x|mu_a, A) N(x|mu_b, B) dx = log N(mu_a | mu_b, A + B), summed over the last dim.

    Broadcasts like the arithmetic operators. log(A + B) is a logaddexp of the log-variances,
    so tiny or huge variances never pass through exp.
    """
    logvar_sum = torch.logaddexp(logvar_a, logvar_b)
    return -0.5 * (LOG_2PI + logvar_sum + (mu_a - mu_b).pow(2) * torch.exp(-logvar_sum)).sum(-1)


def log_weights(logits: Tensor | None, k: int, like: Tensor) -> Tensor:
    """Log mixture weights log softmax(logits); uniform -log K when logits is None."""
    if logits is None:
        return torch.full((k,), -math.log(k), dtype=like.dtype, device=like.device)
    return torch.log_softmax(logits, dim=-1)


def log_mixture_self_integral(logits: Tensor | None, mu: Tensor, logvar: Tensor) -> Tensor:
    """log ∫ p(x)² dx for a diagonal mixture: LSE_{k,k'}[log π_k + log π_k' + log N(μ_k|μ_k', Σ_k+Σ_k')].

    Depends only on the mixture, so callers compute it once per step, not once per sample. The
    double sum is symmetric, so only the K(K-1)/2 pairs k < k' are formed (counted twice, + log 2)
    plus the K diagonal terms log N(μ_k|μ_k, 2Σ_k): about 3x faster than the full K x K x D grid
    at K = 500 (benchmarks/speed.py), same value.
    """
    k = mu.shape[0]
    lw = log_weights(logits, k, mu)
    if _fused(logvar):
        return pair_sums.PairLSE.apply(lw, mu, logvar, _needs_grad(lw, mu, logvar))
    diag = 2.0 * lw + log_gaussian_self_integral(logvar)
    if k == 1:
        return diag[0]
    a, b = torch.triu_indices(k, k, offset=1, device=mu.device)
    pairs = lw[a] + lw[b] + log_gaussian_overlap(mu[a], logvar[a], mu[b], logvar[b]) + math.log(2.0)
    return torch.logsumexp(torch.cat([pairs, diag]), dim=0)


def log_mixture_cross_integral(
    logits_a: Tensor | None, mu_a: Tensor, logvar_a: Tensor, logits_b: Tensor | None, mu_b: Tensor, logvar_b: Tensor
) -> Tensor:
    """log ∫ p_a(x) p_b(x) dx for two diagonal mixtures (scalar)."""
    lw_a = log_weights(logits_a, mu_a.shape[0], mu_a)
    lw_b = log_weights(logits_b, mu_b.shape[0], mu_b)
    if _fused(logvar_a, logvar_b):
        return torch.logsumexp(lw_a + pair_sums.RowLSE.apply(mu_a, logvar_a, lw_b, mu_b, logvar_b), dim=0)
    overlap = log_gaussian_overlap(mu_a[:, None, :], logvar_a[:, None, :], mu_b[None, :, :], logvar_b[None, :, :])
    return torch.logsumexp((lw_a[:, None] + lw_b[None, :] + overlap).reshape(-1), dim=0)


def log_gaussian_self_integral(logvar: Tensor) -> Tensor:
    """log ∫ N(x|μ,Σ)² dx = log N(μ|μ,2Σ) = -(D/2) log 4π - ½ Σ_j log σ_j², per row."""
    d = logvar.shape[-1]
    return -0.5 * d * math.log(4.0 * math.pi) - 0.5 * logvar.sum(-1)


def cs_divergence(
    mu: Tensor, logvar: Tensor, prior_mu: Tensor, prior_logvar: Tensor, prior_logits: Tensor | None = None
) -> Tensor:
    """D_CS between each N(mu[b], diag exp(logvar[b])) and one diagonal Gaussian mixture.

    mu, logvar: [B, D]; prior_mu, prior_logvar: [K, D]; prior_logits: [K] or None (uniform).
    Returns [B]. With uniform weights the log K terms cancel exactly between the cross and
    self terms, so no extra constant appears.
    """
    k = prior_mu.shape[0]
    lw = log_weights(prior_logits, k, prior_mu)
    # Cross term, O(B·K·D): log ∫ q p = LSE_k[log π_k + log N(μ | μ_k, σ² + σ_k²)].
    if _fused(logvar, prior_logvar):
        cross = pair_sums.RowLSE.apply(mu, logvar, lw, prior_mu, prior_logvar)
    else:
        cross = torch.logsumexp(
            lw[None, :] + log_gaussian_overlap(mu[:, None, :], logvar[:, None, :], prior_mu[None], prior_logvar[None]),
            dim=1,
        )
    prior_self = log_mixture_self_integral(prior_logits, prior_mu, prior_logvar)
    q_self = log_gaussian_self_integral(logvar)
    return -cross + 0.5 * prior_self + 0.5 * q_self


def cs_divergence_mixtures(
    logits_a: Tensor | None, mu_a: Tensor, logvar_a: Tensor, logits_b: Tensor | None, mu_b: Tensor, logvar_b: Tensor
) -> Tensor:
    """D_CS between two diagonal Gaussian mixtures (scalar); logits None means uniform weights."""
    cross = log_mixture_cross_integral(logits_a, mu_a, logvar_a, logits_b, mu_b, logvar_b)
    self_a = log_mixture_self_integral(logits_a, mu_a, logvar_a)
    self_b = log_mixture_self_integral(logits_b, mu_b, logvar_b)
    return -cross + 0.5 * self_a + 0.5 * self_b


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) in closed form, summed over the last dim."""
    return 0.5 * (mu.pow(2) + torch.exp(logvar) - 1.0 - logvar).sum(-1)


def log_mixture_density(z: Tensor, logits: Tensor | None, mu: Tensor, logvar: Tensor) -> Tensor:
    """log p(z) for a diagonal mixture; z: [..., D] -> [...]."""
    lw = log_weights(logits, mu.shape[0], mu)
    if _FUSED and not torch.compiler.is_compiling():
        d = z.shape[-1]
        return pair_sums.RowLSE.apply(z.reshape(-1, d), None, lw, mu, logvar).reshape(z.shape[:-1])
    return torch.logsumexp(lw + log_normal(z.unsqueeze(-2), mu, logvar), dim=-1)


def log_mixture_density_matmul(z: Tensor, logits: Tensor | None, mu: Tensor, logvar: Tensor) -> Tensor:
    """log p(z) as log_mixture_density, without the [..., K, D] temporary: for many z at once (IS-NLL).

    Σ_d (z_d - μ_kd)² / σ²_kd = z² · (1/σ²_k) - 2 z · (μ_k/σ²_k) + μ_k² · (1/σ²_k) is three matrix
    products over D. The expansion cancels when z is far from μ_k relative to σ_k, so it is evaluated
    in float64 and returned in z's dtype. Memory O(N·K) instead of O(N·K·D).
    """
    shape, d = z.shape[:-1], z.shape[-1]
    z64, mu64, lv64 = z.reshape(-1, d).double(), mu.double(), logvar.double()
    inv_var = torch.exp(-lv64)
    quad = (z64 * z64) @ inv_var.T - 2.0 * (z64 @ (mu64 * inv_var).T) + (mu64 * mu64 * inv_var).sum(-1)
    log_n = -0.5 * (d * LOG_2PI + lv64.sum(-1) + quad.clamp_min(0.0))
    lw = log_weights(logits, mu.shape[0], mu64)
    return torch.logsumexp(lw + log_n, dim=-1).to(z.dtype).reshape(shape)


def kl_monte_carlo(
    z: Tensor, mu: Tensor, logvar: Tensor, prior_logits: Tensor | None, prior_mu: Tensor, prior_logvar: Tensor
) -> Tensor:
    """One-sample (per z) Monte-Carlo KL: log q(z|x) - log p(z), for priors with no closed form."""
    return log_normal(z, mu, logvar) - log_mixture_density(z, prior_logits, prior_mu, prior_logvar)


def component_log_responsibilities(
    mu: Tensor, logvar: Tensor, prior_logits: Tensor | None, prior_mu: Tensor, prior_logvar: Tensor
) -> Tensor:
    """Score of each component for each encoding: log π_k + log N(μ(x) | μ_k, σ²(x) + σ_k²), [B, K].

    Its argmax over k is the clustering assignment (docs/PROTOCOLS.md)."""
    lw = log_weights(prior_logits, prior_mu.shape[0], prior_mu)
    return lw[None, :] + log_gaussian_overlap(mu[:, None, :], logvar[:, None, :], prior_mu[None], prior_logvar[None])
