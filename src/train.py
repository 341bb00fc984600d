"""The training loop: warm-up, early stopping, metrics.csv, checkpoints (src/checkpoints.py) and exact resume.

Everything random in training draws from two sources whose states are checkpointed every epoch:
a dedicated torch.Generator (shuffling, dynamic binarisation, dequantisation) and torch's global
RNG (the reparameterisation noise). A run resumed from checkpoints/last.pt therefore continues
exactly as the uninterrupted run would have (same device, same thread count).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from src.checkpoints import load_checkpoint, restore, save_checkpoint
from src.contract import METRIC_COLUMNS, PRETRAIN_COLUMNS, append_metrics, reset_metrics
from src.data import DataBundle, binarize
from src.errors import UserError, first_line
from src.geco import effective_weight, geco_update, start_log_lambda
from src.models import Autoencoder, loss_terms_mean
from src.schema import enum_value
from src.settings import TrainSettings

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; the message names the epoch, step and term."""


class TrainingPruned(Exception):
    """Raised by fit's after_epoch hook to stop training for good (a sweep's pruner stopped the trial)."""

    def __init__(self, epoch: int, value: float):
        super().__init__(f"pruned after epoch {epoch} (interim value {value:.4f})")
        self.epoch, self.value = epoch, value
        self.train_seconds: float | None = None  # set by fit


class CompileError(UserError, RuntimeError):
    """trainer.compile=true but torch.compile does not work on this machine."""


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    best_val: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    compile_seconds: float = 0.0  # trainer.compile: time spent compiling, not counted in train_seconds
    pretrain_epoch: int = 0  # pretraining epochs completed
    geco_log_lambda: float | None = None  # GECO multiplier state (src/geco.py), None until training starts
    geco_c_ma: float | None = None


def build_optimizer(params, cfg) -> torch.optim.Optimizer:
    name = enum_value(cfg.name)
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
        )
    raise ValueError(f"unknown optimizer {name!r}")


def regulariser_weight(epoch: int, final: float, warmup_epochs: int) -> float:
    """Linear warm-up: epoch e (1-based) gets final · min(1, e / warmup_epochs)."""
    if warmup_epochs <= 0:
        return final
    return final * min(1.0, epoch / warmup_epochs)


# --- the loop -----------------------------------------------------------------------------------


def _check_finite(terms, epoch: int, step: int) -> None:
    recon, reg = terms.recon.mean(), terms.reg.mean()
    bad = [name for name, v in (("reconstruction", recon), ("regulariser", reg)) if not torch.isfinite(v)]
    if bad:
        kept = (
            f"the last good checkpoint is checkpoints/last.pt (epoch {epoch - 1})"
            if epoch > 1
            else "no checkpoint was written (first epoch)"
        )
        raise NonFiniteLossError(
            f"non-finite {' and '.join(bad)} term at epoch {epoch}, step {step} "
            f"(reconstruction={recon.item():.4g}, regulariser={reg.item():.4g}); training stopped, {kept}; "
            "try a smaller optimizer.lr"
        )


def _prepare_batch(x: torch.Tensor, binary: bool, generator: torch.Generator, device) -> torch.Tensor:
    if binary:
        x = torch.bernoulli(x, generator=generator)  # dynamic binarisation, a fresh draw every step
    else:
        x = (x * 255.0 + torch.rand(x.shape, generator=generator)) / 256.0  # uniform dequantisation
    return x.to(device, non_blocking=True)


@torch.no_grad()
def _refit_mixture(model: Autoencoder, data: DataBundle, n: int, seed: int, optimizer, device) -> None:
    """VaDE-style initialisation: fit the mixture to the encoder's aggregate posterior (fit_to_codes) on
    the first n training images as the encoder sees them. Binary data are binarised once for this, with
    a generator of their own seeded by the run's seed: the same draw on every run and every resume, and
    the training generator's stream is left alone."""
    model.eval()
    x = data.train.x[:n]
    if data.binary:
        x = binarize(x, torch.Generator().manual_seed(seed))
    posteriors = [model.encode(x[i : i + 1000].to(device)) for i in range(0, x.shape[0], 1000)]
    codes = torch.cat([mu for mu, _ in posteriors])
    code_vars = torch.cat([logvar.exp() for _, logvar in posteriors])
    model.prior.fit_to_codes(codes, code_vars, seed=seed)
    for p in model.prior.parameters():  # stale Adam moments would pull the new values back
        optimizer.state.pop(p, None)
    log.info("prior refitted to the aggregate posterior of %d training points (diagonal GMM, sklearn)", codes.shape[0])


def _compiled_graphs() -> int:
    """How many graphs torch.compile has built in this process (a step that adds some spent time compiling)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _compile_failed(e: Exception) -> CompileError:
    first = first_line(e, "")[:200]
    return CompileError(
        f"trainer.compile=true but torch.compile does not work here ({type(e).__name__}: {first}); "
        "use trainer.compile=false"
    )


class _Loop(NamedTuple):
    """What every epoch of pretraining and training works with."""

    model: Autoencoder
    data: DataBundle
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    settings: TrainSettings
    device: torch.device


def _train_epoch(loop: _Loop, desc: str, step_loss, compiled: bool = False) -> tuple[list[float], float]:
    """One pass over the shuffled training set. step_loss(x, step) -> (loss, recon [B], reg [B] or None).
    Returns the epoch's means of loss, recon and reg, and the seconds its steps spent compiling
    (compiled=True: step_loss calls a torch.compile'd function; a failure before any graph is built
    is torch.compile's, reported in one line)."""
    model, data, optimizer, generator, settings, device = loop
    x_train, n = data.train.x, data.train.x.shape[0]
    steps = math.ceil(n / settings.batch_size)
    model.train()
    perm = torch.randperm(n, generator=generator)
    sums = torch.zeros(3, dtype=torch.float64)
    compiling = 0.0
    bar = None
    if settings.progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=desc, leave=False, dynamic_ncols=True)
    for step in range(steps):
        idx = perm[step * settings.batch_size : (step + 1) * settings.batch_size]
        x = _prepare_batch(x_train[idx], data.binary, generator, device)
        if compiled:
            t_step, graphs = time.perf_counter(), _compiled_graphs()
        try:
            loss, recon, reg = step_loss(x, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        except NonFiniteLossError:
            raise
        except Exception as e:
            if compiled and graphs == 0:
                raise _compile_failed(e) from None
            raise
        if compiled and _compiled_graphs() != graphs:
            compiling += time.perf_counter() - t_step
        optimizer.step()
        sums += torch.tensor(
            [loss.item(), recon.mean().item(), 0.0 if reg is None else reg.mean().item()], dtype=torch.float64
        ) * len(idx)
        if bar is not None:
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    return (sums / n).tolist(), compiling


@torch.no_grad()
def _validation_recon(model: Autoencoder, x: torch.Tensor, batch: int, device) -> float:
    model.eval()
    return (
        sum(model.reconstruction(x[i : i + batch].to(device)).sum().item() for i in range(0, x.shape[0], batch))
        / x.shape[0]
    )


def _pretrain(loop: _Loop, state: TrainState, run_dir: Path, on_epoch: Callable[[dict], None] | None) -> None:
    """Autoencoder pretraining (reconstruction only), then the prior refit to the pretrained codes (VaDE).

    Each epoch is checkpointed like a training epoch (state.pretrain_epoch counts them), logged to
    pretrain_metrics.csv and handed to on_epoch. The refit and a fresh optimizer state (the
    reconstruction-only Adam moments do not belong to the new objective) come with the last
    pretraining epoch, before its checkpoint.
    """
    model, data, optimizer, generator, settings, device = loop
    if not settings.pretrain_epochs:
        return
    metrics = run_dir / "pretrain_metrics.csv"
    reset_metrics(metrics, state.pretrain_epoch, PRETRAIN_COLUMNS)
    last = run_dir / "checkpoints" / "last.pt"

    def step_loss(x, step):
        recon = model.reconstruction(x)
        if not torch.isfinite(recon.mean()):
            raise NonFiniteLossError(
                f"non-finite reconstruction term in pretraining epoch {epoch}, step {step}; try a smaller optimizer.lr"
            )
        return recon.mean(), recon, None

    while state.pretrain_epoch < settings.pretrain_epochs:
        epoch = state.pretrain_epoch + 1
        t0 = time.perf_counter()
        tr, _ = _train_epoch(loop, f"pretrain {epoch}/{settings.pretrain_epochs}", step_loss)
        val_recon = _validation_recon(model, data.val.x, 500, device)
        if epoch == settings.pretrain_epochs:
            if settings.refit_after_pretraining and model.prior.refits_to_codes:
                _refit_mixture(model, data, settings.kmeans_samples, settings.seed, optimizer, device)
            optimizer.state.clear()
        seconds = time.perf_counter() - t0
        state.pretrain_epoch, state.train_seconds = epoch, state.train_seconds + seconds
        row = dict(zip(PRETRAIN_COLUMNS, [epoch, tr[1], val_recon, optimizer.param_groups[0]["lr"], seconds]))
        append_metrics(metrics, row, PRETRAIN_COLUMNS)
        if on_epoch is not None:
            on_epoch(row)
        if settings.checkpoint:
            save_checkpoint(last, model, optimizer, state, generator, settings.fingerprint)
        log.info(
            f"pretrain epoch {epoch}/{settings.pretrain_epochs}  train recon {tr[1]:.3f}  val recon {val_recon:.3f}"
            f"  {seconds:.1f}s"
        )


def fit(
    model: Autoencoder,
    data: DataBundle,
    optimizer: torch.optim.Optimizer,
    settings: TrainSettings,
    run_dir: Path,
    device: torch.device,
    on_epoch: Callable[[dict], None] | None = None,
    on_pretrain_epoch: Callable[[dict], None] | None = None,
    after_epoch: Callable[[int, bool], None] | None = None,
) -> TrainState:
    """Pretrain (if asked), then train with warm-up or the GECO constraint and early stopping;
    resumable from run_dir/checkpoints/last.pt.

    on_epoch(row) is called with each epoch's metrics.csv row once it is written, on_pretrain_epoch(row)
    with each pretrain_metrics.csv row (trackers); after_epoch(epoch, last) once the epoch is checkpointed
    (last: training ends after it anyway), and may raise TrainingPruned to end training."""
    ckpt_dir = run_dir / "checkpoints"
    last, best = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    metrics = run_dir / "metrics.csv"
    generator = torch.Generator().manual_seed(settings.seed)
    state = TrainState()
    if settings.resume and last.exists():
        state = TrainState(**restore(load_checkpoint(last, settings.fingerprint), last, model, optimizer, generator))
        if state.stopped_early or state.epoch >= settings.epochs:
            log.info(
                "%s holds a finished run (%d epochs%s): nothing left to train; evaluating it again (results.json "
                "is rewritten; raise trainer.epochs to train on)",
                last,
                state.epoch,
                ", stopped early" if state.stopped_early else "",
            )
        else:
            log.info("resumed from %s after epoch %d", last, state.epoch)
    loop = _Loop(model, data, optimizer, generator, settings, device)
    _pretrain(loop, state, run_dir, on_pretrain_epoch)
    reset_metrics(metrics, state.epoch)
    geco = settings.geco
    if geco is not None and state.geco_log_lambda is None:
        state.geco_log_lambda = start_log_lambda(geco)

    loss_terms = torch.compile(model.loss_terms) if settings.compile else model.loss_terms
    while state.epoch < settings.epochs and not state.stopped_early:
        epoch = state.epoch + 1
        t0 = time.perf_counter()

        def step_loss(x, step, epoch=epoch):  # called within this epoch only
            terms = loss_terms(x)
            _check_finite(terms, epoch, step)
            if geco is None:
                return (
                    terms.total(regulariser_weight(epoch, settings.reg_weight, settings.warmup_epochs)),
                    terms.recon,
                    terms.reg,
                )
            loss = terms.total(effective_weight(state.geco_log_lambda))
            state.geco_log_lambda, state.geco_c_ma = geco_update(
                state.geco_log_lambda, state.geco_c_ma, terms.recon.mean().item(), geco
            )
            return loss, terms.recon, terms.reg

        tr, compiling = _train_epoch(loop, f"epoch {epoch}/{settings.epochs}", step_loss, compiled=settings.compile)
        if settings.kmeans_epoch is not None and epoch == settings.kmeans_epoch and model.prior.refits_to_codes:
            _refit_mixture(model, data, settings.kmeans_samples, settings.seed, optimizer, device)
            # The objective changed under the model: earlier validation losses no longer compare.
            state.best_val, state.bad_epochs = math.inf, 0

        # Validation at the final (nominal) weight, comparable across epochs, also under the constraint,
        # whose effective weight moves every step; metrics.csv's reg_weight is the weight trained with.
        if geco is None:
            weight = regulariser_weight(epoch, settings.reg_weight, settings.warmup_epochs)
        else:
            weight = effective_weight(state.geco_log_lambda)
        val_recon, val_reg = loss_terms_mean(model, data.val.x, 500, device)
        val_loss = val_recon + settings.reg_weight * val_reg
        if not math.isfinite(val_loss):
            raise NonFiniteLossError(
                f"non-finite validation loss at epoch {epoch} "
                f"(reconstruction={val_recon:.4g}, regulariser={val_reg:.4g})"
            )
        seconds = time.perf_counter() - t0 - compiling
        state.epoch, state.train_seconds = epoch, state.train_seconds + seconds
        if compiling:
            state.compile_seconds += compiling
            log.info("torch.compile: %.1fs compiling in epoch %d (not counted in the epoch time)", compiling, epoch)
        if val_loss < state.best_val:
            state.best_val, state.best_epoch, state.bad_epochs = val_loss, epoch, 0
            if settings.checkpoint:
                save_checkpoint(best, model, optimizer, state, generator, settings.fingerprint)
        elif epoch > settings.warmup_epochs:  # the loss scale still moves during warm-up
            state.bad_epochs += 1
        if settings.patience and state.bad_epochs >= settings.patience:
            state.stopped_early = True
        lr = optimizer.param_groups[0]["lr"]
        row = dict(zip(METRIC_COLUMNS, [epoch, *tr, val_loss, val_recon, val_reg, weight, lr, seconds]))
        append_metrics(metrics, row)
        if on_epoch is not None:
            on_epoch(row)
        if settings.checkpoint:
            save_checkpoint(last, model, optimizer, state, generator, settings.fingerprint)
        stop = "  early stop" if state.stopped_early else ""
        log.info(
            f"epoch {epoch}/{settings.epochs}  train {tr[0]:.3f} (recon {tr[1]:.3f}, reg {tr[2]:.4f}, w {weight:.3g})"
            f"  val {val_loss:.3f}  best {state.best_epoch}  {seconds:.1f}s{stop}"
        )
        if after_epoch is not None:
            try:
                after_epoch(epoch, state.stopped_early or epoch >= settings.epochs)
            except TrainingPruned as e:
                e.train_seconds = state.train_seconds
                raise
    return state
