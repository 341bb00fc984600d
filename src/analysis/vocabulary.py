"""The words of the analysis: run statuses, the metrics and how to show them, the config entries that
never split a group."""

from __future__ import annotations

from dataclasses import dataclass

from src.contract import FEWLABEL_KEYS, FEWLABEL_N

#: Config entries that do not change what is learned (or only how fast): never grouping keys (nor are
#: hydra.* and sweep.*, which name the sweep, not the model).
NOT_GROUPING = {
    "trainer.threads",
    "trainer.compile",
    "trainer.progress",
    "trainer.device",
    "trainer.checkpoint",
    "trainer.resume",
    "eval.images",
    "eval.n_images",
    "eval.is_chunk",
    "eval.is_batch",
    "dataset.root",
    "dataset.download",
}

COMPLETED = "completed"
PRUNED = "pruned"  # an Optuna trial stopped by its study's pruner: counted, never compared
INVALID = "invalid"  # a completed run whose results.json has a value of the wrong kind (e.g. test_nll "abc")
STATUS_ORDER = ["completed", "pruned", "failed", "interrupted", "running", "no results.json", "unreadable", INVALID]


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    unit: str
    higher_is_better: bool


METRICS = {
    "test_nll": Metric("test_nll", "test NLL", "nats", False),
    "val_nll": Metric("val_nll", "validation NLL", "nats", False),
    "test_recon": Metric("test_recon", "test reconstruction", "nats", False),
    "acc": Metric("acc", "clustering ACC", "", True),
    "nmi": Metric("nmi", "NMI", "", True),
    "ari": Metric("ari", "ARI", "", True),
    "test_reg": Metric("test_reg", "test regulariser", "nats", False),
    **{
        f"fewlabel_{kind}_{n}": Metric(f"fewlabel_{kind}_{n}", f"few-label {what} ({n}/class)", "", True)
        for kind, what in (("lr", "LR"), ("comp", "components"))
        for n in FEWLABEL_N
    },
}
SUMMARY_METRICS = [
    "test_nll",
    "val_nll",
    "test_recon",
    "test_reg",
    "acc",
    "nmi",
    "ari",
    "n_clusters_used",
    *FEWLABEL_KEYS,
    "epochs_run",
    "best_epoch",
    "train_seconds",
]
VERDICT_METRICS = ["test_nll", "acc", "nmi"]


def metric_info(name: str) -> Metric:
    """The metric of METRICS; for any other column a plain one (its name as label, no unit, lower is better)."""
    return METRICS.get(name, Metric(name, name, "", False))


def metric_digits(metric: str) -> int:
    """Decimals to show: 3 for scores in [0, 1], 2 for nats, 1 for anything else."""
    if metric in ("acc", "nmi", "ari") or metric.startswith("fewlabel_"):
        return 3
    return 2 if metric_info(metric).unit == "nats" else 1


def unit_suffix(metric: str) -> str:
    """' nats' to put after a number of the metric, '' when it has no unit."""
    u = metric_info(metric).unit
    return f" {u}" if u else ""
