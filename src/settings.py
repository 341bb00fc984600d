"""The run's settings: `TrainSettings`, what the training loop needs from a config (plain values, no
Hydra), built by `train_settings(cfg)`, and `config_fingerprint(cfg)`, what a checkpoint must carry to
belong to a configuration.

Below the training loop (src.train) and the run directory's checks (src.rundir), which both take a
TrainSettings; imports no model or data code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import OmegaConf

from src.checkpoints import fingerprint
from src.geco import GecoSettings, default_rate
from src.priors import PRIORS
from src.schema import enum_value


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
    kmeans_epoch: int | None = None  # refit a prior that refits to codes (a gmm) after this epoch
    kmeans_samples: int = 2000
    pretrain_epochs: int = 0  # reconstruction-only epochs before training
    refit_after_pretraining: bool = False  # refit such a prior to the pretrained encoder's codes
    geco: GecoSettings | None = None  # the reconstruction constraint; None = the scheduled weight
    fingerprint: str = ""  # identifies the configuration a checkpoint belongs to
    compile: bool = False  # torch.compile the training step's forward and backward


GECO_KEYS = ("constraint", "target_recon", "geco_alpha", "geco_rate")


def _model_identity(model: dict) -> dict:
    """The model settings a checkpoint depends on. Settings with a neutral default (hidden_dims, the
    constraint) enter only away from it, so a configuration that leaves them at it has the fingerprint
    of one that does not have them."""
    drop = set()
    if model.get("hidden_dims") is None:
        drop.add("hidden_dims")
    if model.get("constraint", "none") == "none":
        drop.update(GECO_KEYS)
    return {k: v for k, v in model.items() if k not in drop}


def train_settings(cfg) -> TrainSettings:
    """What the training loop needs from a config, and the fingerprint its checkpoints carry."""
    t, p, m = cfg.trainer, cfg.prior, cfg.model
    kmeans = PRIORS[enum_value(p.name)].refits_to_codes and enum_value(p.init) == "kmeans"
    to_plain = lambda c: OmegaConf.to_container(
        OmegaConf.structured(c) if not OmegaConf.is_config(c) else c,  # noqa
        resolve=True,
        enum_to_str=True,
    )
    # Where the files live and whether they may be downloaded do not change what a checkpoint means;
    # the optimizer, batch size, warm-up and pretraining do (the saved optimizer state would silently
    # override a new learning rate). trainer.epochs and patience may change on resume: that is how
    # runs are extended.
    data_identity = {k: v for k, v in to_plain(cfg.dataset).items() if k not in ("root", "download")}
    schedule = {"batch_size": t.batch_size, "warmup_epochs": t.warmup_epochs}
    if t.pretrain_epochs:
        schedule["pretrain_epochs"] = t.pretrain_epochs
    geco = None
    if enum_value(m.constraint) == "reconstruction":
        geco = GecoSettings(
            target=float(m.target_recon),
            alpha=float(m.geco_alpha),
            rate=default_rate(float(m.target_recon)) if m.geco_rate is None else float(m.geco_rate),
            start_weight=float(m.reg_weight),
        )
    return TrainSettings(
        epochs=t.epochs,
        batch_size=t.batch_size,
        reg_weight=m.reg_weight,
        warmup_epochs=t.warmup_epochs,
        patience=t.patience,
        seed=t.seed,
        checkpoint=t.checkpoint,
        resume=t.resume,
        progress=t.progress,
        # With pretraining, a kmeans-initialised GMM is refitted once, at its end (VaDE), not at kmeans_epoch.
        kmeans_epoch=p.kmeans_epoch if kmeans and not t.pretrain_epochs else None,
        kmeans_samples=p.kmeans_samples,
        pretrain_epochs=t.pretrain_epochs,
        compile=t.compile,
        refit_after_pretraining=kmeans,
        geco=geco,
        fingerprint=fingerprint(
            model=_model_identity(to_plain(m)),
            prior=to_plain(p),
            dataset=data_identity,
            seed=t.seed,
            optimizer=to_plain(cfg.optimizer),
            schedule=schedule,
        ),
    )


def config_fingerprint(cfg) -> str:
    """What a checkpoint must carry to belong to this configuration (see train_settings)."""
    return train_settings(cfg).fingerprint


def resolve_device(name: str) -> torch.device:
    name = enum_value(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but CUDA is not available here; use trainer.device=auto or cpu")
    return torch.device(name)
