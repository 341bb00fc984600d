"""Evaluation: the importance-sampled NLL, the component assignments and posterior means behind the
clustering and few-label scores (src/label_metrics.py), and pictures. `evaluate_model` is the
evaluation every run ends with; `python -m src.evaluate RUN_DIR` repeats it on a finished run
(src/finished_runs.py).

Importance-sampled log-likelihood (Burda et al.; the VampPrior protocol):

    log p(x) ≈ LSE_s[ log p(x|z_s) + log p(z_s) - log q(z_s|x) ] - log S,   z_s ~ q(z|x)

computed for many test points at once, with the S samples in chunks so memory stays bounded.
The estimate is a stochastic lower bound on log p(x) whose expectation rises with S; NLL is
reported as the positive number -log p(x) in nats.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from src.contract import FEWLABEL_KEYS
from src.data import DataBundle
from src.divergences import log_mixture_density_matmul, log_normal
from src.formatting import duration
from src.label_metrics import cluster_accuracy, clustering_metrics, fewlabel_metrics
from src.models import Autoencoder, loss_terms_mean
from src.plotting import pyplot
from src.train import NonFiniteLossError

log = logging.getLogger(__name__)


# The importance-sampling noise comes in blocks of NOISE_POINTS points x NOISE_SAMPLES samples, each
# drawn from its own generator seeded by (seed, point block, sample block).
NOISE_POINTS, NOISE_SAMPLES = 16, 64
_MASK64 = (1 << 64) - 1


def _mix64(*values: int) -> int:
    """splitmix64 folded over integers: a well-spread 64-bit seed for (seed, point block, sample block)."""
    h = 0
    for v in values:
        h = ((h ^ (v & _MASK64)) + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h


def importance_noise(
    seed: int, first_index: int, n_points: int, start: int, n: int, dim: int, device: torch.device | str = "cpu"
) -> Tensor:
    """Standard normal noise for samples start..start+n-1 of points first_index..first_index+n_points-1
    of an evaluation set, as [n, n_points, dim] float32 on device.

    A function of (seed, point index, sample index, device type) only: how the points are batched and
    the samples chunked (memory knobs) does not change the estimate. Blocks that a batch or chunk
    covers only in part are drawn whole and sliced, so batch and chunk sizes that are multiples of
    NOISE_POINTS and NOISE_SAMPLES waste nothing.
    """
    device = torch.device(device)
    p0, p1 = first_index // NOISE_POINTS, -(-(first_index + n_points) // NOISE_POINTS)
    s0, s1 = start // NOISE_SAMPLES, -(-(start + n) // NOISE_SAMPLES)
    buf = torch.empty((s1 - s0) * NOISE_SAMPLES, (p1 - p0) * NOISE_POINTS, dim, device=device)
    g = torch.Generator(device=device)
    for pb in range(p0, p1):
        for sb in range(s0, s1):
            g.manual_seed(_mix64(seed, pb, sb))
            rows, cols = (sb - s0) * NOISE_SAMPLES, (pb - p0) * NOISE_POINTS
            buf[rows : rows + NOISE_SAMPLES, cols : cols + NOISE_POINTS] = torch.randn(
                NOISE_SAMPLES, NOISE_POINTS, dim, generator=g, device=device
            )
    i, j = start - s0 * NOISE_SAMPLES, first_index - p0 * NOISE_POINTS
    return buf[i : i + n, j : j + n_points]


def _draw_seed() -> int:
    """A seed taken from torch's global RNG, so torch.manual_seed controls the evaluation noise."""
    return int(torch.randint(0, 2**62, (1,)).item())


CPU_MAX_ROWS = 10_000  # decoder rows per importance-sampling chunk on CPU


@torch.no_grad()
def importance_log_weights(
    model: Autoencoder, x: Tensor, n_samples: int, chunk: int, seed: int | None = None, first_index: int = 0
) -> Tensor:
    """log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x) for s = 1..S, as [S, B].

    The noise of x[b] is importance_noise(seed, first_index + b, ...): x[b] is point first_index + b
    of the whole evaluation set. seed None draws one from torch's global RNG.
    """
    seed = _draw_seed() if seed is None else seed
    mu, logvar = model.encode(x)
    prior = model.prior_components()  # computed once: depends only on the prior

    out = []
    for start in range(0, n_samples, chunk):
        s = min(chunk, n_samples - start)
        eps = importance_noise(seed, first_index, mu.shape[0], start, s, mu.shape[1], mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps.to(mu.dtype)
        params = model.decode(z.reshape(-1, mu.shape[1]))
        x_rep = x.unsqueeze(0).expand(s, *x.shape).reshape(-1, *x.shape[1:])
        log_px_z = model.log_likelihood(x_rep, params).reshape(s, -1)
        log_pz = log_mixture_density_matmul(z, *prior)  # no [s, B, K, D] temporary
        log_qz = log_normal(z, mu, logvar)
        out.append(log_px_z + log_pz - log_qz)
    return torch.cat(out, 0)


@torch.no_grad()
def importance_sampled_nll(
    model: Autoencoder,
    x: Tensor,
    n_samples: int = 500,
    chunk: int = 500,
    batch: int = 500,
    device: torch.device | None = None,
    seed: int | None = None,
    name: str | None = None,
) -> Tensor:
    """Per-point NLL estimate -log p(x) in nats, [N]; x is evaluated `batch` points at a time.

    For a given seed the result does not depend on `batch` or `chunk` (see importance_noise);
    seed None draws one from torch's global RNG (so torch.manual_seed makes it reproducible).
    With a name ("test", "validation"), progress is logged at most every PROGRESS_EVERY_S seconds.
    """
    device = device or next(model.parameters()).device
    seed = _draw_seed() if seed is None else seed
    model.eval()
    nll = []
    progress = _Progress(name, x.shape[0], n_samples) if name else None
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch].to(device)
        chunk_b = max(1, min(chunk, (chunk * 500) // max(1, xb.shape[0])))  # bound S_chunk·B
        if device.type == "cpu":  # past ~10k rows per decoder call the [rows, pixels] temporaries only cost
            # memory and cache misses on CPU (benchmarks/speed.py); keep whole noise blocks
            chunk_b = min(
                chunk_b, max(NOISE_SAMPLES, CPU_MAX_ROWS // max(1, xb.shape[0]) // NOISE_SAMPLES * NOISE_SAMPLES)
            )
        log_w = importance_log_weights(model, xb, n_samples, chunk_b, seed=seed, first_index=start)
        nll.append(-(torch.logsumexp(log_w, 0) - math.log(n_samples)).cpu())
        if progress:
            progress.update(start + xb.shape[0])
    return torch.cat(nll)


PROGRESS_EVERY_S = 60.0  # an S = 5000 evaluation of 10 000 points takes most of an hour on one core


class _Progress:
    """Log lines for a long importance-sampled evaluation: points done, time spent, time left."""

    def __init__(self, name: str, total: int, n_samples: int):
        self.name, self.total, self.n_samples = name, total, n_samples
        self.t0 = self.last = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if now - self.last < PROGRESS_EVERY_S or done >= self.total:
            return
        self.last = now
        spent = now - self.t0
        log.info(
            "%s NLL (S=%d): %d/%d points, %s, about %s left",
            self.name,
            self.n_samples,
            done,
            self.total,
            duration(spent),
            duration(spent * (self.total - done) / done),
        )


def interim_nll(model: Autoencoder, x: Tensor, n_samples: int, points: int, device=None) -> float:
    """A cheap validation NLL for a sweep's pruner: importance sampled with n_samples samples on the first
    `points` points of x, with the same noise (one fixed seed) at every call and for every trial, so
    interim values of different configurations and epochs compare. Draws nothing from torch's RNG."""
    nll = importance_sampled_nll(model, x[:points], n_samples=n_samples, device=device, seed=INTERIM_SEED)
    return nll.mean().item()


INTERIM_SEED = 20_241  # any fixed value: interim values share their noise across trials


@torch.no_grad()
def assign_components(model: Autoencoder, x: Tensor, batch: int = 1000, device=None) -> np.ndarray:
    device = device or next(model.parameters()).device
    model.eval()
    return torch.cat(
        [model.assign_components(x[i : i + batch].to(device)).cpu() for i in range(0, x.shape[0], batch)]
    ).numpy()


@torch.no_grad()
def posterior_means(model: Autoencoder, x: Tensor, batch: int = 1000, device=None) -> np.ndarray:
    device = device or next(model.parameters()).device
    model.eval()
    return torch.cat([model.encode(x[i : i + batch].to(device))[0].cpu() for i in range(0, x.shape[0], batch)]).numpy()


def standard_error(points: torch.Tensor) -> float | None:
    """The standard error of the mean of per-point values; None for a single point (no spread to see)."""
    return (points.std() / math.sqrt(len(points))).item() if len(points) > 1 else None


def evaluate_model(model: Autoencoder, data: DataBundle, ev, seed: int, out_dir: Path, device) -> dict:
    """The metrics of results.json for the model's current weights: test and validation NLL (S = ev.is_samples),
    the test loss terms, clustering and few-label accuracies where asked for, pictures in out_dir.

    ev is an eval config (src.schema.EvalConfig). Its noise is seeded with seed + 1 (seed: the run's
    trainer.seed), so the same weights and eval settings give the same numbers on the same device.
    """
    t0 = time.perf_counter()
    torch.manual_seed(seed + 1)  # evaluation noise independent of how training went
    log.info(
        "evaluating: S=%d importance samples on %d test and %d validation points",
        ev.is_samples,
        len(data.test.x),
        len(data.val.x),
    )
    is_kwargs = dict(n_samples=ev.is_samples, chunk=ev.is_chunk, batch=ev.is_batch, device=device)
    test_nll = importance_sampled_nll(model, data.test.x, name="test", **is_kwargs)
    val_points = importance_sampled_nll(model, data.val.x, name="validation", **is_kwargs)
    val_nll = val_points.mean().item()
    test_recon, test_reg = loss_terms_mean(model, data.test.x, device=device)
    out = {
        "test_nll": test_nll.mean().item(),
        "test_nll_sem": standard_error(test_nll),
        "test_recon": test_recon,
        "test_reg": test_reg,
        "val_nll": val_nll,
        "val_nll_sem": standard_error(val_points),
        "acc": None,
        "nmi": None,
        "ari": None,
        "acc_mapping": None,
        "n_clusters_used": None,
        "val_acc": None,
        "n_test": len(test_nll),
        **{k: None for k in FEWLABEL_KEYS},
    }
    if not math.isfinite(val_nll):
        raise NonFiniteLossError(f"validation NLL is not finite ({val_nll}); the model diverged")

    clusters = None
    if (ev.clustering or ev.fewlabel) and model.prior.K > 1:
        clusters = assign_components(model, data.test.x, device=device)
    if ev.clustering and model.prior.K > 1:
        out.update(clustering_metrics(data.test.y.numpy(), clusters, model.prior.K))
        # Validation ACC: what a sweep may select on (test ACC stays untouched by model selection).
        out["val_acc"] = cluster_accuracy(
            data.val.y.numpy(), assign_components(model, data.val.x, device=device), model.prior.K
        )[0]
    if ev.fewlabel:
        out.update(_fewlabel(model, data, clusters, ev.fewlabel_seed, device))
    if ev.images:
        out["images"] = write_images(
            model, data.test.x, data.test.y, out_dir, ev.n_images, seed=seed, clusters=clusters
        )
    out["eval_seconds"] = time.perf_counter() - t0
    return out


def _fewlabel(model: Autoencoder, data: DataBundle, test_clusters, seed: int, device) -> dict:
    """Few-label accuracies (fewlabel_metrics) from posterior means of the training set, binarised
    once with a fixed seed like the test set (the same inputs for every run)."""
    x_train = data.train.x
    if data.binary:
        x_train = torch.bernoulli(x_train, generator=torch.Generator().manual_seed(seed))
    train_comps = assign_components(model, x_train, device=device) if test_clusters is not None else None
    return fewlabel_metrics(
        posterior_means(model, x_train, device=device),
        data.train.y.numpy(),
        posterior_means(model, data.test.x, device=device),
        data.test.y.numpy(),
        train_comps=train_comps,
        test_comps=test_clusters,
        seed=seed,
    )


# --- pictures ---------------------------------------------------------------------------------


def save_grid(images: Tensor, path, nrow: int) -> None:
    """Save a grid of images; small images (8×8 digits) are enlarged so the PNG is readable."""
    from torchvision.utils import save_image

    images = images.detach().cpu().clamp(0, 1)
    scale = max(1, math.ceil(28 / images.shape[-1]))
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    save_image(images, str(path), nrow=nrow, padding=scale, pad_value=0.5)


@torch.no_grad()
def write_images(
    model: Autoencoder,
    x_test: Tensor,
    y_test: Tensor,
    out_dir,
    n_images: int = 64,
    seed: int = 0,
    clusters: np.ndarray | None = None,
) -> list[str]:
    """samples.png, components.png, reconstructions.png, latent_scatter.png in out_dir (created here, so
    that an evaluation that ends early leaves no empty one); returns the file names."""
    plt = pyplot()
    device = next(model.parameters()).device
    model.eval()
    g = torch.Generator().manual_seed(seed)
    written = []
    Path(out_dir).mkdir(exist_ok=True)

    samples, _ = model.sample(n_images, generator=g)
    save_grid(samples, out_dir / "samples.png", nrow=int(math.ceil(math.sqrt(n_images))))
    written.append("samples.png")

    k = min(model.prior.K, 20)  # one row per component, the first <= 20
    per_row = 10
    comp = torch.arange(k, device=device).repeat_interleave(per_row)
    comp_imgs, _ = model.sample(k * per_row, component=comp, generator=g)
    save_grid(comp_imgs, out_dir / "components.png", nrow=per_row)
    written.append("components.png")

    n = min(32, x_test.shape[0])
    x = x_test[:n].to(device)
    mu, _ = model.encode(x)
    recon = model.mean_image(model.decode(mu))
    pairs = torch.stack([x, recon], 1).reshape(2 * n, *x.shape[1:])  # original, reconstruction, ...
    save_grid(pairs, out_dir / "reconstructions.png", nrow=16)
    written.append("reconstructions.png")

    means = posterior_means(model, x_test)
    if means.shape[1] > 2 and len(means) >= 2:  # two components need two points
        from sklearn.decomposition import PCA

        coords, axis = PCA(n_components=2, random_state=0).fit_transform(means), "PC"
    else:
        coords, axis = np.pad(means[:, :2], ((0, 0), (0, max(0, 2 - means.shape[1])))), "z"
    panels = [("label", y_test.numpy())] + ([("component", clusters)] if clusters is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 5), squeeze=False)
    for ax, (title, colour) in zip(axes[0], panels):
        sc = ax.scatter(
            coords[:, 0], coords[:, 1], c=colour, cmap="tab10" if colour.max() < 10 else "tab20", s=6, alpha=0.8
        )
        ax.set_title(f"test posterior means, coloured by {title}")
        ax.set_xlabel(f"{axis}1")
        ax.set_ylabel(f"{axis}2")
        if colour.max() < 20:
            fig.colorbar(sc, ax=ax, ticks=np.unique(colour))
    fig.tight_layout()
    fig.savefig(out_dir / "latent_scatter.png", dpi=100)
    plt.close(fig)
    written.append("latent_scatter.png")
    return written
