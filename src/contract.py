"""The results contract (docs/CONTRACT.md): the files every run writes and the keys they hold.

The one place for these names: the run writes results.json through `write_results`, and analysis
reads it with the same key lists. Imports no torch, so reading results stays fast.
"""

from __future__ import annotations

import csv
import json
import math
import os
from functools import reduce
from pathlib import Path
from typing import Any

from src.files import NO_SPACE_ERRNOS, replace_atomically
from src.schema import enum_value

FEWLABEL_N = (1, 10, 100)  # labelled training points per class of the few-label accuracies
FEWLABEL_KEYS = [f"fewlabel_{kind}_{n}" for kind in ("lr", "comp") for n in FEWLABEL_N]

#: Keys of results.json, in the order the file lists them.
RESULT_KEYS = (
    """
    status model prior K dataset seed reg_weight latent_dim variant network weights lr epochs
    epochs_run best_epoch stopped_early test_nll test_nll_sem test_recon test_reg val_nll val_nll_sem acc nmi
    ari acc_mapping n_clusters_used val_acc is_samples train_seconds compile_seconds eval_seconds
    n_params device error constraint target_recon pretrain_epochs n_test interim_val_nll
""".split()
    + FEWLABEL_KEYS
)

#: results.json keys measured on the test set: reported, never selected on (no sweep objective may be one).
TEST_KEYS = (
    "test_nll test_nll_sem test_recon test_reg acc nmi ari acc_mapping n_clusters_used n_test".split() + FEWLABEL_KEYS
)

#: The configuration columns of results.json and the config path each comes from.
CONFIG_COLUMNS = {
    "model": "model.name",
    "prior": "prior.name",
    "K": "prior.K",
    "dataset": "dataset.name",
    "reg_weight": "model.reg_weight",
    "latent_dim": "model.latent_dim",
    "variant": "model.variant",
    "network": "model.network",
    "weights": "prior.weights",
    "lr": "optimizer.lr",
    "epochs": "trainer.epochs",
    "is_samples": "eval.is_samples",
    "seed": "trainer.seed",
    "constraint": "model.constraint",
    "target_recon": "model.target_recon",
    "pretrain_epochs": "trainer.pretrain_epochs",
}

#: results.json keys that must be numbers (or null) for a run to count; the integer ones must fit int64.
INT_KEYS = """
    K seed latent_dim epochs epochs_run best_epoch n_clusters_used is_samples n_params job_num trial
    n_test pretrain_epochs
""".split()
FLOAT_KEYS = (
    """
    reg_weight lr test_nll test_nll_sem test_recon test_reg val_nll val_nll_sem acc nmi ari val_acc
    train_seconds eval_seconds compile_seconds target_recon interim_val_nll
""".split()
    + FEWLABEL_KEYS
)

#: metrics.csv: one row per training epoch.
METRIC_COLUMNS = "epoch train_loss train_recon train_reg val_loss val_recon val_reg reg_weight lr seconds".split()
#: pretrain_metrics.csv: the autoencoder pretraining epochs (reconstruction only), numbered 1..pretrain_epochs.
PRETRAIN_COLUMNS = "epoch train_recon val_recon lr seconds".split()


def key_config(cfg: Any) -> dict:
    """The configuration columns of results.json, read from a composed config or the dataclass schema."""
    out = {}
    for column, path in CONFIG_COLUMNS.items():
        v = reduce(getattr, path.split("."), cfg)
        v = enum_value(v)
        if v is not None and column in INT_KEYS:
            v = int(v)
        elif v is not None and column in FLOAT_KEYS:
            v = float(v)
        out[column] = v
    return out


def strict(results: dict) -> dict:
    """Strict JSON has no NaN or Infinity: such a number becomes null, and `non_finite` says what it was
    (by its path: `test_recon`, `params.optimizer.lr`), at any depth (a sweep's params are nested)."""
    bad: dict = {}

    def clean(value, path: str):
        if isinstance(value, float) and not math.isfinite(value):
            bad[path] = str(value)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    out = {k: clean(v, k) for k, v in results.items()}
    return {**out, "non_finite": bad} if bad else out


def write_results(run_dir: Path, results: dict) -> None:
    """Atomically (re)write results.json, every RESULT_KEYS key first: a reader never sees half a file.

    On a full disk, where the temporary copy finds no room, the existing file is rewritten in place
    (its own blocks take the new record): a record left `running` by a process that is gone misleads
    every reader, while an interrupted in-place write at worst shows as unreadable.
    """
    full = {k: results.get(k) for k in RESULT_KEYS}
    full.update({k: v for k, v in results.items() if k not in full})
    data = json.dumps(strict(full), indent=2, default=str, allow_nan=False).encode()
    path = Path(run_dir) / "results.json"
    try:
        with replace_atomically(path) as tmp:
            tmp.write_bytes(data)
    except OSError as e:
        if e.errno not in NO_SPACE_ERRNOS or not path.is_file():
            raise
        with open(path, "r+b") as f:
            f.write(data)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())


def reset_metrics(path: Path, keep_through_epoch: int, columns: list[str] = METRIC_COLUMNS) -> None:
    """Keep only the rows of completed (checkpointed) epochs, so that a resumed run lists each epoch once.
    A row cut short (a full disk, a crash while appending) is dropped: its epoch is not checkpointed."""
    rows = []
    if keep_through_epoch > 0 and path.exists():
        with open(path, newline="") as f:
            rows = [
                r
                for r in csv.DictReader(f)
                if all(r.get(c) for c in columns) and r["epoch"].isdigit() and int(r["epoch"]) <= keep_through_epoch
            ]
    with replace_atomically(path) as tmp, open(tmp, "w", newline="") as f:  # a kill must not lose the rows kept
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)


def append_metrics(path: Path, row: dict, columns: list[str] = METRIC_COLUMNS) -> None:
    """One epoch's row, on disk before the epoch's checkpoint is written."""
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=columns).writerow(row)
        f.flush()
        os.fsync(f.fileno())
