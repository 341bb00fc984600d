"""The report's tables for display: numbers as text, with the digits each metric needs (the CSV files
keep the full numbers)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from src import analysis as A
from src.formatting import number

DISPLAY_METRICS = [
    ("test_nll", "test NLL"),
    ("val_nll", "val NLL"),
    ("test_recon", "test recon"),
    ("acc", "ACC"),
    ("nmi", "NMI"),
    ("ari", "ARI"),
    ("n_clusters_used", "clusters used"),
    ("fewlabel_lr_10", "few-label LR (10/class)"),
    ("fewlabel_comp_10", "few-label comp (10/class)"),
    ("best_epoch", "best epoch"),
]
RESULT_COLUMNS = [
    "epochs_run",
    "best_epoch",
    "test_nll",
    "val_nll",
    "acc",
    "nmi",
    "ari",
    "n_clusters_used",
    "train_seconds",
]


def _mean_ci(row: pd.Series, metric: str) -> str:
    n = row.get(f"{metric}_n", 0)
    if not n or pd.isna(n):
        return "–"
    d = A.metric_digits(metric)
    s = number(row[f"{metric}_mean"], d)
    if np.isfinite(row[f"{metric}_ci95"]):
        s += f" ± {number(row[f'{metric}_ci95'], d)}"
    return s + f" (n={int(n)})"


def summary_display(summary: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    out = pd.DataFrame()
    for k in keys:
        out[A.short_key(k) if k != "reg_weight" else "β/λ"] = summary[k].map(number)
    out["seeds"] = summary["seeds"]
    for m, label in DISPLAY_METRICS:
        if f"{m}_mean" in summary and summary[f"{m}_n"].fillna(0).sum() > 0:
            out[label] = [_mean_ci(r, m) for _, r in summary.iterrows()]
    return out


def comparisons_display(comps: dict, keys: Sequence[str]) -> pd.DataFrame:
    rows = []
    for metric, t in comps.items():
        d = A.metric_digits(metric)
        for _, r in t.iterrows():
            name = A.side_labels(r.to_dict())
            rows.append(
                {
                    "metric": A.METRICS[metric].label,
                    "setting": A.setting_label(r.to_dict(), keys),
                    "a − b": f"{name[r['a']]} − {name[r['b']]}",
                    "seeds": r["seeds"],
                    "mean a": number(r["mean_a"], d),
                    "mean b": number(r["mean_b"], d),
                    "difference ± 95% CI": number(r["diff"], d)
                    + (f" ± {number(r['diff_ci95'], d)}" if np.isfinite(r["diff_ci95"]) else ""),
                    "p": number(r["p"], 3),
                    "p (Holm)": number(r["p_holm"], 3),
                    "better": "–" if pd.isna(r["better"]) else name[r["better"]],
                    "significant": "yes" if r["significant"] else "no",
                }
            )
    return pd.DataFrame(rows)


def excluded_display(runs: pd.DataFrame) -> pd.DataFrame:
    ex = A.excluded(runs)
    now = time.time()
    rows = []
    for _, r in ex.iterrows():
        note = r["error"] if isinstance(r["error"], str) else ""
        if r["status"] == "running" and pd.notna(r.get("last_update")):
            age = now - r["last_update"].timestamp()
            note = (
                f"last update {_age(age)} ago: still running, or killed without a chance to record it "
                "(SIGKILL leaves status running)"
            )
        rows.append(
            {
                "run": r["run"],
                "status": r["status"],
                "model": number(r["model"]),
                "prior": number(r["prior"]),
                "K": number(r["K"]),
                "seed": number(r["seed"]),
                "overrides": r["overrides"] or "",
                "reason": note,
            }
        )
    return pd.DataFrame(rows)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def runs_display(runs: pd.DataFrame) -> pd.DataFrame:
    """The run table of the page: run, status, the settings that vary (model, prior, K always), seed,
    and the main results. runs.csv has every column."""
    config = [k for k in A.candidate_keys(runs) if k in ("model", "prior", "K") or k in A.varying_keys(runs)]
    out = runs[["run", "status"] + config + ["seed"]].astype(object).map(number)
    for c in RESULT_COLUMNS:
        out[c] = runs[c].map(lambda v: number(v, 3) if isinstance(v, float) else number(v))
    return out
