"""Checkpoint files: checkpoints/last.pt (every epoch, for an exact resume) and checkpoints/best.pt
(the best validation epoch, which the final evaluation uses).

A checkpoint is a dict of state dicts and RNG states plus the fingerprint of the configuration that
wrote it. It is read with `weights_only=True` (a checkpoint cannot run code) and refused when its
fingerprint is not the current configuration's.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from src.errors import UserError, first_line
from src.files import replace_atomically

log = logging.getLogger(__name__)

RESUME_FIX = "use a new run dir (hydra.run.dir=...); this one keeps the run that wrote it"


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be read or belongs to another configuration."""


#: What each part of a fingerprint is, by the config keys it holds (trainer.seed is a number, the rest dicts).
FINGERPRINT_PARTS = ("model", "prior", "dataset", "trainer.seed", "optimizer", "trainer")


def fingerprint(model: dict, prior: dict, dataset: dict, seed: int, optimizer: dict, schedule: dict) -> str:
    """The configuration a checkpoint belongs to (src.settings decides what enters each part)."""
    return json.dumps([model, prior, dataset, seed, optimizer, schedule], sort_keys=True, default=str)


def _config_keys(fingerprint: str) -> dict | None:
    """A fingerprint as {config key: value}, or None when it is not one of fingerprint()'s."""
    try:
        parts = json.loads(fingerprint)
    except (TypeError, ValueError):
        return None
    if not isinstance(parts, list) or len(parts) != len(FINGERPRINT_PARTS):
        return None
    out = {}
    for name, part in zip(FINGERPRINT_PARTS, parts):
        out.update({f"{name}.{k}": v for k, v in part.items()} if isinstance(part, dict) else {name: part})
    return out


def differences(stored: str, current: str) -> str:
    """`key=now (the checkpoint has then)` for every key whose value differs, '; '-separated ('' if unknown)."""
    then, now = _config_keys(stored), _config_keys(current)
    if then is None or now is None:
        return ""

    def shown(values: dict, key: str) -> str:
        v = values.get(key)
        return "none" if v is None else v if isinstance(v, str) else json.dumps(v)

    keys = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))
    return "; ".join(f"{k}={shown(now, k)} (the checkpoint has {shown(then, k)})" for k in keys)


def atomic_torch_save(obj, path: Path) -> None:
    # Through a Python file: a failed write then surfaces as its OSError (disk full), which
    # torch.save(obj, path) reports only as an opaque RuntimeError.
    with replace_atomically(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def save_checkpoint(
    path: Path, model: nn.Module, optimizer, state: Any, generator: torch.Generator, fingerprint: str
) -> None:
    """state: the training loop's TrainState (a dataclass), restored by `restore`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": asdict(state),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rng_generator": generator.get_state(),
            "fingerprint": fingerprint,
        },
        path,
    )


def load_checkpoint(path: Path, fingerprint: str | None = None, fix: str = RESUME_FIX) -> dict:
    """Read a checkpoint safely (weights_only) and check it belongs to this configuration;
    `fix` ends the error message (what the user can do)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign files
        raise CheckpointError(f"cannot read checkpoint {path} ({_why_unreadable(path, e)}); {fix}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "state" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint of this harness; {fix}")
    if fingerprint is not None and ckpt.get("fingerprint") != fingerprint:
        which = differences(str(ckpt.get("fingerprint")), fingerprint) or (
            "model, prior, dataset, seed, optimizer, batch size or warm-up"
        )
        raise CheckpointError(f"checkpoint {path} was written for a different configuration ({which}); {fix}")
    return ckpt


def _why_unreadable(path: Path, e: Exception) -> str:
    """One line on why torch.load failed, without torch's advice to load with weights_only=False
    (which would execute whatever the file contains)."""
    if path.stat().st_size == 0:
        return "the file is empty"
    text = str(e)
    if "weights_only" in text or "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        what = f" ({found.group(1)})" if found else ""
        return f"it holds Python objects{what} that a safe (weights_only) load refuses to run"
    first = first_line(text, "").split(". ")[0]
    return f"{type(e).__name__}: {first[:200]}" if first else type(e).__name__


def restore(ckpt: dict, path: Path, model: nn.Module, optimizer, generator: torch.Generator) -> dict:
    """Put a checkpoint back into the model, optimizer and RNGs; returns the saved training state (a dict)."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"checkpoint {path} does not match this model ({first_line(e)[:200]}); "
            "use a new run dir or trainer.resume=false"
        ) from None
    torch.set_rng_state(ckpt["rng_torch"])
    if ckpt["rng_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng_cuda"])
    generator.set_state(ckpt["rng_generator"])
    return ckpt["state"]


def best_checkpoint(
    run_dir: Path, fingerprint: str, best_epoch: int | None = None, fix: str = RESUME_FIX
) -> dict | None:
    """checkpoints/best.pt when it holds this run's best epoch, else None (the run then evaluates its
    final weights).

    A best.pt of another configuration is an error. One of an earlier epoch (a resume with
    trainer.checkpoint=false found a better epoch it did not save) is left alone with a warning.
    """
    best = Path(run_dir) / "checkpoints" / "best.pt"
    if not best.exists():
        return None
    ckpt = load_checkpoint(best, fingerprint, fix)
    if best_epoch is not None and ckpt["state"]["epoch"] != best_epoch:
        log.warning(
            "%s holds epoch %d, not the best epoch %d (not saved: trainer.checkpoint=false); "
            "evaluating the final weights",
            best,
            ckpt["state"]["epoch"],
            best_epoch,
        )
        return None
    return ckpt


def load_best_weights(model: nn.Module, run_dir: Path, fingerprint: str, best_epoch: int | None = None) -> bool:
    """Load checkpoints/best.pt into the model when it is this run's best epoch (best_checkpoint); True if loaded."""
    ckpt = best_checkpoint(run_dir, fingerprint, best_epoch)
    if ckpt is None:
        return False
    model.load_state_dict(ckpt["model"])
    return True
