"""The training loop: warm-up, early stopping, metrics.csv, checkpoints and exact resume.

Everything random in training draws from two sources whose states are checkpointed every epoch:
a dedicated torch.Generator (shuffling, dynamic binarisation, dequantisation) and torch's global
RNG (the reparameterisation noise). A run resumed from checkpoints/last.pt therefore continues
exactly as the uninterrupted run would have (same device, same thread count).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from src.data import DataBundle
from src.models import Autoencoder
from src.priors import GaussianMixture

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "train_loss", "train_recon", "train_reg", "val_loss", "val_recon", "val_reg",
                  "reg_weight", "lr", "seconds"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch, step and term."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read or belongs to another configuration."""


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    best_val: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0


@dataclass
class TrainSettings:
    """What the loop needs from trainer / optimizer / prior configs (plain values, no Hydra)."""
    epochs: int
    batch_size: int
    reg_weight: float
    warmup_epochs: int = 0
    patience: int = 0
    seed: int = 0
    checkpoint: bool = True
    resume: bool = True
    progress: bool = True
    kmeans_epoch: Optional[int] = None  # refit a GaussianMixture prior after this epoch
    kmeans_samples: int = 2000
    fingerprint: str = ""  # identifies the configuration a checkpoint belongs to


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    name = getattr(cfg.name, "value", cfg.name)
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    raise ValueError(f"unknown optimizer {name!r}")


def regulariser_weight(epoch: int, final: float, warmup_epochs: int) -> float:
    """Linear warm-up: epoch e (1-based) gets final · min(1, e / warmup_epochs)."""
    if warmup_epochs <= 0:
        return final
    return final * min(1.0, epoch / warmup_epochs)


def resolve_device(name: str) -> torch.device:
    name = getattr(name, "value", name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but CUDA is not available here; use trainer.device=auto or cpu")
    return torch.device(name)


# --- checkpoints --------------------------------------------------------------------------------

def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, model: nn.Module, optimizer, state: TrainState, generator: torch.Generator,
                    fingerprint: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save({
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "state": asdict(state),
        "rng_torch": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "rng_generator": generator.get_state(),
        "fingerprint": fingerprint,
    }, path)


def load_checkpoint(path: Path, fingerprint: Optional[str] = None) -> dict:
    """Read a checkpoint safely (weights_only) and check it belongs to this configuration."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"cannot read checkpoint {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                              "delete it or rerun with trainer.resume=false") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "state" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint of this harness; delete it or set trainer.resume=false")
    if fingerprint is not None and ckpt.get("fingerprint") != fingerprint:
        raise CheckpointError(f"checkpoint {path} was written for a different configuration (model, prior, dataset, seed, optimizer, batch size or warm-up); "
                              "use a new run dir, or trainer.resume=false to start over in this one")
    return ckpt


def _restore(ckpt: dict, path: Path, model: nn.Module, optimizer, generator: torch.Generator) -> TrainState:
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} does not match this model ({str(e).splitlines()[0][:200]}); "
                              "use a new run dir or trainer.resume=false") from None
    torch.set_rng_state(ckpt["rng_torch"])
    if ckpt["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng_cuda"])
    generator.set_state(ckpt["rng_generator"])
    return TrainState(**ckpt["state"])


# --- metrics.csv --------------------------------------------------------------------------------

def _prepare_metrics(path: Path, keep_through_epoch: int) -> None:
    """Keep only rows of completed (checkpointed) epochs, so each epoch appears exactly once."""
    rows = []
    if keep_through_epoch > 0 and path.exists():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= keep_through_epoch]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        w.writeheader()
        w.writerows(rows)


def _append_metrics(path: Path, row: dict) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=METRIC_COLUMNS).writerow(row)
        f.flush()
        os.fsync(f.fileno())


# --- the loop -----------------------------------------------------------------------------------

def _check_finite(terms, epoch: int, step: int) -> None:
    recon, reg = terms.recon.mean(), terms.reg.mean()
    bad = [name for name, v in (("reconstruction", recon), ("regulariser", reg)) if not torch.isfinite(v)]
    if bad:
        kept = (f"the last good checkpoint is checkpoints/last.pt (epoch {epoch - 1})" if epoch > 1
                else "no checkpoint was written (first epoch)")
        raise NonFiniteLossError(
            f"non-finite {' and '.join(bad)} term at epoch {epoch}, step {step} "
            f"(reconstruction={recon.item():.4g}, regulariser={reg.item():.4g}); training stopped, {kept}; "
            "try a smaller optimizer.lr")


def _prepare_batch(x: torch.Tensor, binary: bool, generator: torch.Generator, device) -> torch.Tensor:
    if binary:
        x = torch.bernoulli(x, generator=generator)  # dynamic binarisation, a fresh draw every step
    else:
        x = (x * 255.0 + torch.rand(x.shape, generator=generator)) / 256.0  # uniform dequantisation
    return x.to(device, non_blocking=True)


@torch.no_grad()
def _validation_terms(model: Autoencoder, x: torch.Tensor, batch: int, device) -> tuple[float, float]:
    model.eval()
    recon = reg = 0.0
    for i in range(0, x.shape[0], batch):
        t = model.loss_terms(x[i:i + batch].to(device))
        recon += t.recon.sum().item()
        reg += t.reg.sum().item()
    return recon / x.shape[0], reg / x.shape[0]


@torch.no_grad()
def _refit_mixture(model: Autoencoder, x: torch.Tensor, n: int, seed: int, optimizer, device) -> None:
    """VaDE-style initialisation: fit the mixture to the encoder's aggregate posterior (GaussianMixture.fit_to_codes)."""
    model.eval()
    n = min(n, x.shape[0])  # the first n training images, in chunks of 1000
    posteriors = [model.encode(x[i:min(i + 1000, n)].to(device)) for i in range(0, n, 1000)]
    codes = torch.cat([mu for mu, _ in posteriors])
    code_vars = torch.cat([logvar.exp() for _, logvar in posteriors])
    model.prior.fit_to_codes(codes, code_vars, seed=seed)
    for p in model.prior.parameters():  # stale Adam moments would pull the new values back
        optimizer.state.pop(p, None)
    log.info("prior refitted to the aggregate posterior of %d training points (diagonal GMM, sklearn)", codes.shape[0])


def fit(model: Autoencoder, data: DataBundle, optimizer: torch.optim.Optimizer, settings: TrainSettings,
        run_dir: Path, device: torch.device, on_epoch: Optional[Callable[[dict], None]] = None) -> TrainState:
    """Train with warm-up and early stopping; resumable from run_dir/checkpoints/last.pt.

    on_epoch(row) is called with each epoch's metrics.csv row once it is written (trackers)."""
    ckpt_dir = run_dir / "checkpoints"
    last, best = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    metrics = run_dir / "metrics.csv"
    generator = torch.Generator().manual_seed(settings.seed)
    state = TrainState()
    if settings.resume and last.exists():
        state = _restore(load_checkpoint(last, settings.fingerprint), last, model, optimizer, generator)
        log.info("resumed from %s after epoch %d", last, state.epoch)
    _prepare_metrics(metrics, state.epoch)

    x_train, n = data.train.x, data.train.x.shape[0]
    steps = math.ceil(n / settings.batch_size)
    show_bar = settings.progress and sys.stderr.isatty()
    while state.epoch < settings.epochs and not state.stopped_early:
        epoch = state.epoch + 1
        weight = regulariser_weight(epoch, settings.reg_weight, settings.warmup_epochs)
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(n, generator=generator)
        sums = torch.zeros(3, dtype=torch.float64)
        bar = None
        if show_bar:
            from tqdm import tqdm
            bar = tqdm(total=steps, desc=f"epoch {epoch}/{settings.epochs}", leave=False, dynamic_ncols=True)
        for step in range(steps):
            idx = perm[step * settings.batch_size:(step + 1) * settings.batch_size]
            x = _prepare_batch(x_train[idx], data.binary, generator, device)
            terms = model.loss_terms(x)
            _check_finite(terms, epoch, step)
            loss = terms.total(weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.tensor([loss.item(), terms.recon.mean().item(), terms.reg.mean().item()],
                                 dtype=torch.float64) * len(idx)
            if bar is not None:
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if bar is not None:
            bar.close()
        if settings.kmeans_epoch is not None and epoch == settings.kmeans_epoch and isinstance(model.prior, GaussianMixture):
            _refit_mixture(model, x_train, settings.kmeans_samples, settings.seed, optimizer, device)
            # The objective changed under the model: earlier validation losses no longer compare.
            state.best_val, state.bad_epochs = math.inf, 0

        val_recon, val_reg = _validation_terms(model, data.val.x, 500, device)
        val_loss = val_recon + settings.reg_weight * val_reg  # at the final weight, comparable across epochs
        if not math.isfinite(val_loss):
            raise NonFiniteLossError(f"non-finite validation loss at epoch {epoch} "
                                     f"(reconstruction={val_recon:.4g}, regulariser={val_reg:.4g})")
        seconds = time.perf_counter() - t0
        state.epoch, state.train_seconds = epoch, state.train_seconds + seconds
        if val_loss < state.best_val:
            state.best_val, state.best_epoch, state.bad_epochs = val_loss, epoch, 0
            if settings.checkpoint:
                save_checkpoint(best, model, optimizer, state, generator, settings.fingerprint)
        elif epoch > settings.warmup_epochs:  # the loss scale still moves during warm-up
            state.bad_epochs += 1
        if settings.patience and state.bad_epochs >= settings.patience:
            state.stopped_early = True
        tr = (sums / n).tolist()
        row = dict(zip(METRIC_COLUMNS, [epoch, tr[0], tr[1], tr[2], val_loss, val_recon, val_reg, weight,
                                        optimizer.param_groups[0]["lr"], seconds]))
        _append_metrics(metrics, row)
        if on_epoch is not None:
            on_epoch(row)
        if settings.checkpoint:
            save_checkpoint(last, model, optimizer, state, generator, settings.fingerprint)
        log.info("epoch %d/%d  train %.3f (recon %.3f, reg %.4f, w %.3g)  val %.3f  best %d  %.1fs%s",
                 epoch, settings.epochs, tr[0], tr[1], tr[2], weight, val_loss, state.best_epoch, seconds,
                 "  early stop" if state.stopped_early else "")
    return state


def load_best_weights(model: nn.Module, run_dir: Path) -> None:
    """Load checkpoints/best.pt into the model (weights only)."""
    best = run_dir / "checkpoints" / "best.pt"
    if best.exists():
        model.load_state_dict(load_checkpoint(best)["model"])


def fingerprint(*configs) -> str:
    return json.dumps(configs, sort_keys=True, default=str)
