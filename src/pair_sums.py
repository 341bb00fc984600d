"""Exact, tiled value-and-gradient kernels for the two sums over Gaussian pairs behind every mixture term.

    rows(x, x_logvar, lw, mu, logvar)[a] = LSE_b [lw_b + log N(x_a | μ_b, v_a + v_b)]   (v_a = 0: x_logvar None)
    pairs(lw, mu, logvar)                = LSE_{a,b} [lw_a + lw_b + log N(μ_a | μ_b, v_a + v_b)]

src/divergences.py builds the CS cross term (rows), the mixture self-integral (pairs) and the mixture
density (rows without x_logvar) from them. Its broadcast reference materialises a dozen [A, B, D] tensors
that autograd keeps for the backward pass; here the pairs are visited in blocks of about TILE_ELEMENTS
entries that stay in cache, and each block is contracted at once with the analytic gradient,
per dimension:

    ∂e/∂μ_a = −(μ_a−μ_b)/(v_a+v_b) = −∂e/∂μ_b,   ∂e/∂v_a = ∂e/∂v_b = −½[1/(v_a+v_b) − (μ_a−μ_b)²/(v_a+v_b)²].

- pairs: one pass computes value and gradient. The sum is symmetric, so each strip of rows visits only
  the columns from its own first row on (pairs across the diagonal count twice), and the largest term is
  known in advance: by Cauchy-Schwarz lw_a + lw_b + e_ab ≤ max_a (2 lw_a + e_aa), the diagonal.
- rows: the forward pass keeps the [A, B] softmax weights; the backward pass, which needs the upstream
  gradient of every row, recomputes each block.

On CPU the same blocks run as native loops (src/native.py builds src/pair_sums_native.cpp; one pass per
pair, one log per pair instead of D): the forward of `rows` and the single pass of `pairs` call them, and
so does the backward of `rows`. The torch tiles below are the path on CUDA, under USE_NATIVE = False, and
wherever the library cannot be built.

Variances enter as exp(logvar − c_d), c_d the largest log-variance of dimension d, and means as
μ·exp(−c_d/2): every score is unchanged and nothing over- or underflows as long as the spread of the
log-variances within a dimension is below spread_limit (the caller checks; beyond it the reference,
which never leaves log space, is used).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from src import native

LOG_2PI = math.log(2.0 * math.pi)
TILE_ELEMENTS = 1 << 18  # entries of one [rows, cols, D] block (measured on one CPU thread, benchmarks/speed.py)


def spread_ok(*logvars: Tensor) -> bool:
    """True when exp(logvar − per-dimension max) stays far from underflow in this dtype."""
    lv = torch.cat([v.detach().reshape(-1, v.shape[-1]) for v in logvars])
    limit = 0.5 * -math.log(torch.finfo(lv.dtype).tiny)  # 43 nats in float32, 354 in float64
    return bool(((lv.amax(0) - lv.amin(0)).max() < limit).item())


USE_NATIVE = True  # src/native.py's compiled loops on CPU; False: the tiled torch code below everywhere


@contextlib.contextmanager
def torch_tiles_only():
    """Within the block the tiled torch code runs on CPU too, instead of the native loops."""
    global USE_NATIVE
    saved, USE_NATIVE = USE_NATIVE, False
    try:
        yield
    finally:
        USE_NATIVE = saved


def _native_chunk(c: Tensor, logvars: tuple, others: tuple = ()) -> int:
    """Dimensions per partial product for the native loops (src/native.py), or 0 to use the torch tiles.
    Every tensor the loops read (means, weights) goes in: they must share one dtype and device."""
    if not (USE_NATIVE and native.usable(c, *logvars, *others)):
        return 0
    spread = max(float((c - lv.detach().amin(0)).max()) for lv in logvars)
    return native.chunk(spread, c.shape[0]) if math.isfinite(spread) else 0


def _rows_layout(mu: Tensor, logvar: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """_scaled's values laid out [rows, D], as the native loops read them."""
    return (mu * torch.exp(-0.5 * c)).contiguous(), torch.exp(logvar - c).contiguous()


def _rows_per_block(cols: int, d: int) -> int:
    return max(1, TILE_ELEMENTS // max(1, cols * d))


def _scaled(mu: Tensor, logvar: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """(μ·exp(−c/2), exp(logvar − c)) transposed to [D, K]: the blocks are laid out [D, rows, cols] so that
    the sum over D and the weighting by [rows, cols] run over contiguous memory."""
    return (mu * torch.exp(-0.5 * c)).T.contiguous(), torch.exp(logvar - c).T.contiguous()


def _flush_tiny(w: Tensor) -> Tensor:
    """Zero the weights below tiny^0.8 (1e-31 in float32): they change no sum, but subnormal numbers
    would slow every multiplication they enter ~50-fold."""
    return w.masked_fill_(w.abs() < torch.finfo(w.dtype).tiny ** 0.8, 0.0)


def _block_terms(mu_a: Tensor, v_a: Tensor, mu_b: Tensor, v_b: Tensor):
    """For a block of pairs (scaled, [D, n] and [D, m]): Σ_d [log(v_a+v_b) + (μ_a−μ_b)²/(v_a+v_b)] [n, m],
    and the [D, n, m] tensors 1/(v_a+v_b) and (μ_a−μ_b)/(v_a+v_b) for the gradient."""
    vsum = v_a[:, :, None] + v_b[:, None, :]
    terms = torch.log(vsum)
    inv = vsum.reciprocal_()
    diff = mu_a[:, :, None] - mu_b[:, None, :]
    r = diff * inv
    terms.addcmul_(diff, r)
    return terms.sum(0), inv, r


def _weighted_grads(w: Tensor, inv: Tensor, r: Tensor):
    """Σ_b and Σ_a of w_ab·r_ab and of w_ab·[1/vsum − r_ab²], r = (μ_a−μ_b)/vsum ([D, n], [D, m]; consumes inv, r)."""
    t = inv.addcmul_(r, r, value=-1.0).mul_(w)
    r.mul_(w)
    return r.sum(2), r.sum(1), t.sum(2), t.sum(1)


class RowLSE(torch.autograd.Function):
    """rows(...): forward keeps the [A, B] softmax weights, backward recomputes the blocks."""

    @staticmethod
    def forward(ctx, x, x_logvar, lw, mu, logvar):
        a, d = x.shape
        k = mu.shape[0]
        scores = x.new_empty(a, k)
        step = _rows_per_block(k, d)
        if x_logvar is None:
            xt, mt, inv_b = x.T.contiguous(), mu.T.contiguous(), torch.exp(-logvar).T.contiguous()
            for i in range(0, a, step):
                diff = xt[:, i : i + step, None] - mt[:, None, :]
                scores[i : i + step] = (diff * inv_b[:, None, :]).mul_(diff).sum(0)
            scores.add_(logvar.sum(-1) + d * LOG_2PI).mul_(-0.5)
            saved = (xt, mt, inv_b)
        else:
            c = torch.maximum(x_logvar.amax(0), logvar.amax(0))
            ctx.chunk = _native_chunk(c, (x_logvar, logvar), (x, mu))
            if ctx.chunk:
                (xa, va), (mb, vb) = _rows_layout(x, x_logvar, c), _rows_layout(mu, logvar, c)
                scores = native.row_scores(xa, va, mb, vb, ctx.chunk)
            else:
                xa, va = _scaled(x, x_logvar, c)
                mb, vb = _scaled(mu, logvar, c)
                for i in range(0, a, step):
                    scores[i : i + step] = _block_terms(xa[:, i : i + step], va[:, i : i + step], mb, vb)[0]
            scores.add_(c.sum() + d * LOG_2PI).mul_(-0.5)
            saved = (xa, va, mb, vb, c)
        scores += lw
        out = torch.logsumexp(scores, dim=1)
        ctx.density = x_logvar is None
        ctx.chunk = getattr(ctx, "chunk", 0)
        ctx.save_for_backward(_flush_tiny(scores.sub_(out[:, None]).exp_()), *saved)  # softmax over b, [A, K]
        return out

    @staticmethod
    def backward(ctx, g):
        p, *saved = ctx.saved_tensors
        w = _flush_tiny(p * g[:, None])
        a, k = w.shape
        step = _rows_per_block(k, saved[0].shape[0])
        if ctx.density:
            xt, mt, inv_b = saved
            g_x, g_mu, g_lv = torch.empty_like(xt), torch.zeros_like(mt), torch.zeros_like(mt)
            for i in range(0, a, step):
                diff = xt[:, i : i + step, None] - mt[:, None, :]
                wr = (diff * inv_b[:, None, :]).mul_(w[i : i + step])  # w·(x−μ)/v
                g_x[:, i : i + step] = -wr.sum(2)
                g_mu += wr.sum(1)
                g_lv += wr.mul_(diff).sum(1)
            g_lv = 0.5 * (g_lv.T - w.sum(0)[:, None])
            return g_x.T, None, w.sum(0), g_mu.T, g_lv
        xa, va, mb, vb, c = saved
        scale = -torch.exp(-0.5 * c)
        if ctx.chunk:
            g_x, g_xv, g_mu, g_v = native.row_grads(xa, va, mb, vb, w, ctx.chunk)
            return g_x * scale, -0.5 * va * g_xv, w.sum(0), -g_mu * scale, -0.5 * vb * g_v
        g_x, g_xv = torch.empty_like(xa), torch.empty_like(xa)
        g_mu, g_v = torch.zeros_like(mb), torch.zeros_like(mb)
        for i in range(0, a, step):
            _, inv, r = _block_terms(xa[:, i : i + step], va[:, i : i + step], mb, vb)
            ra, rb, ta, tb = _weighted_grads(w[i : i + step], inv, r)
            g_x[:, i : i + step], g_xv[:, i : i + step] = ra, ta
            g_mu -= rb
            g_v += tb
        return (g_x.T * scale, -0.5 * (va * g_xv).T, w.sum(0), g_mu.T * scale, -0.5 * (vb * g_v).T)


class PairLSE(torch.autograd.Function):
    """pairs(...): value and (when needed) gradient in one pass over the strips above the diagonal."""

    @staticmethod
    def forward(ctx, lw, mu, logvar, need_grad: bool):
        k, d = mu.shape
        c = logvar.amax(0)
        ms, vs = _scaled(mu, logvar, c)
        const = -0.5 * (d * LOG_2PI + c.sum())
        # The largest term is a diagonal one (Cauchy-Schwarz), so exp(term − top) ≤ 1 needs no rescaling.
        top = (2.0 * lw - 0.5 * torch.log(2.0 * vs).sum(0)).max() + const
        chunk = _native_chunk(c, (logvar,), (mu, lw))
        if chunk:
            total, g_lw, g_r, g_t = native.pairs(*_rows_layout(mu, logvar, c), lw, float(const - top), need_grad, chunk)
            out = top + math.log(total)
            if need_grad:
                scale = -torch.exp(-0.5 * c) / total
                ctx.save_for_backward(g_lw / total, g_r * scale, -0.5 * (vs.T * g_t) / total)
            return out
        total = mu.new_zeros(())
        g_lw, g_r, g_t = torch.zeros_like(lw), torch.zeros_like(ms), torch.zeros_like(ms)
        step = _rows_per_block(k, d)  # conservative: later strips are shorter
        for i in range(0, k, step):
            j = min(i + step, k)
            scores, inv, r = _block_terms(ms[:, i:j], vs[:, i:j], ms[:, i:], vs[:, i:])
            w = _flush_tiny(scores.mul_(-0.5).add_(lw[i:j, None] + lw[None, i:] + (const - top)).exp_())
            w[:, j - i :] *= 2.0  # pairs across the diagonal stand for (a, b) and (b, a)
            total += w.sum()
            if need_grad:
                g_lw[i:j] += w.sum(1)
                g_lw[i:] += w.sum(0)
                ra, rb, ta, tb = _weighted_grads(w, inv, r)
                g_r[:, i:j] += ra
                g_r[:, i:] -= rb
                g_t[:, i:j] += ta
                g_t[:, i:] += tb
        out = top + torch.log(total)
        if need_grad:
            scale = -torch.exp(-0.5 * c) / total
            ctx.save_for_backward(g_lw / total, g_r.T * scale, -0.5 * (vs * g_t).T / total)
        return out

    @staticmethod
    def backward(ctx, g):
        g_lw, g_mu, g_lv = ctx.saved_tensors
        return g * g_lw, g * g_mu, g * g_lv, None
