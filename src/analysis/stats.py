"""Statistics over completed runs: means with t-intervals over seeds, paired tests between models on
the seeds both have, Holm correction, and the best configuration or run."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from src.analysis.grouping import group_keys, key_groups, model_settings, value_order
from src.analysis.loading import completed
from src.analysis.vocabulary import SUMMARY_METRICS, metric_info


def mean_ci(values: Iterable[float], level: float = 0.95) -> dict:
    """n, mean, std (ddof=1), sem and the t-based CI half-width of the mean (NaN when n < 2)."""
    v = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").astype(float)
    v = v[np.isfinite(v)]
    n = int(len(v))
    mean = float(v.mean()) if n else float("nan")
    std = float(v.std(ddof=1)) if n > 1 else float("nan")
    sem = std / math.sqrt(n) if n > 1 else float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sem) if n > 1 else float("nan")
    return {"n": n, "mean": mean, "std": std, "sem": sem, "ci95": half, "ci_low": mean - half, "ci_high": mean + half}


def summarize(
    runs: pd.DataFrame, metrics: Sequence[str] | None = None, by: Sequence[str] | None = None
) -> pd.DataFrame:
    """Completed runs grouped over seeds: for each metric `<m>_mean, _std, _ci95, _ci_low, _ci_high, _n`
    (t-based 95% CI of the mean; NaN when n < 2), plus n_runs and the seeds of each group."""
    ok = completed(runs)
    metrics = [m for m in (metrics or SUMMARY_METRICS) if m in runs]
    by = list(by) if by is not None else group_keys(runs)
    if ok.empty:
        return pd.DataFrame(columns=by + ["n_runs", "seeds"])
    rows = []
    for keys, g in ok.groupby(by, dropna=False, sort=True) if by else [((), ok)]:
        keys = keys if isinstance(keys, tuple) else (keys,)
        row = dict(zip(by, keys))
        row["n_runs"] = len(g)
        row["seeds"] = " ".join(str(s) for s in sorted(g["seed"].dropna().unique()))
        for m in metrics:
            s = mean_ci(g[m])
            row.update({f"{m}_{k}": s[k] for k in ("mean", "std", "ci95", "ci_low", "ci_high", "n")})
        rows.append(row)
    return pd.DataFrame(rows)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (NaNs stay NaN and do not count as tests)."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.where(np.isfinite(p))[0]
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx])]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def paired_test(a: pd.Series, b: pd.Series) -> dict:
    """Paired comparison of two per-seed series (index = seed): a − b over the common seeds."""
    common = sorted(set(a.dropna().index) & set(b.dropna().index))
    d = (a.loc[common] - b.loc[common]).astype(float) if common else pd.Series(dtype=float)
    n = len(common)
    s = mean_ci(d)
    p = t_stat = float("nan")
    if n >= 2:
        if s["std"] > 0:
            res = stats.ttest_rel(a.loc[common].astype(float), b.loc[common].astype(float))
            p, t_stat = float(res.pvalue), float(res.statistic)
        elif s["mean"] != 0:  # identical non-zero difference on every seed
            p, t_stat = 0.0, math.copysign(math.inf, s["mean"])
        else:
            p, t_stat = 1.0, 0.0
    return {
        "n": n,
        "seeds": " ".join(map(str, common)),
        "mean_a": float(a.loc[common].mean()) if n else np.nan,
        "mean_b": float(b.loc[common].mean()) if n else np.nan,
        "diff": s["mean"],
        "diff_std": s["std"],
        "diff_ci95": s["ci95"],
        "t": t_stat,
        "p": p,
    }


def per_seed(g: pd.DataFrame, metric: str) -> pd.Series:
    """Metric per seed (duplicate runs of one seed, e.g. from two sweeps, are averaged)."""
    v = g[["seed", metric]].dropna()
    return v.groupby("seed")[metric].mean().astype(float)


def _weight(g: pd.DataFrame) -> float:
    """The one reg_weight of one side's runs (NaN when the runs have none)."""
    w = g["reg_weight"].dropna().unique() if "reg_weight" in g else []
    return float(w[0]) if len(w) == 1 else np.nan


def paired_comparisons(runs: pd.DataFrame, metric: str, between: str = "model") -> pd.DataFrame:
    """For each setting (all other grouping keys equal; see grouping.model_settings), every
    pair of `between` values compared on the seeds both have: mean difference (a − b), its 95% CI, paired
    t-test p and Holm-adjusted p over the rows of this table. weight_a and weight_b are each model's
    reg_weight (NaN unless `between` is the model); `better` names the value with the better mean for this metric."""
    ok = completed(runs)
    ok = ok[pd.to_numeric(ok[metric], errors="coerce").notna()] if metric in ok else ok.iloc[0:0]
    keys = [k for k in group_keys(runs) if k != between]
    cols = keys + [
        "a",
        "b",
        "weight_a",
        "weight_b",
        "n",
        "seeds",
        "mean_a",
        "mean_b",
        "diff",
        "diff_std",
        "diff_ci95",
        "t",
        "p",
        "p_holm",
        "better",
        "significant",
        "metric",
    ]
    if ok.empty or between not in ok:
        return pd.DataFrame(columns=cols)
    higher = metric_info(metric).higher_is_better
    rows = []
    settings = model_settings(ok, keys, runs) if between == "model" else key_groups(ok, keys)
    for ctx, g in settings:
        values = sorted(g[between].dropna().unique(), key=value_order)
        for a, b in combinations(values, 2):
            ga, gb = g[g[between] == a], g[g[between] == b]
            r = paired_test(per_seed(ga, metric), per_seed(gb, metric))
            if r["n"] == 0:
                continue
            better = None
            if np.isfinite(r["diff"]) and r["diff"] != 0:
                better = a if (r["diff"] > 0) == higher else b
            weights = (_weight(ga), _weight(gb)) if between == "model" else (np.nan, np.nan)
            sides = {"a": a, "b": b, "weight_a": weights[0], "weight_b": weights[1]}
            rows.append({**ctx, **sides, **r, "better": better, "metric": metric})
    if not rows:
        return pd.DataFrame(columns=cols)
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"])
    out["significant"] = out["p_holm"] < 0.05
    return out[cols]


def best_configs(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Summary rows sorted best-first by the mean of metric (rows without it dropped)."""
    col = f"{metric}_mean"
    if col not in summary:
        return summary.iloc[0:0]
    s = summary[summary[col].notna()]
    return s.sort_values(col, ascending=not metric_info(metric).higher_is_better, kind="stable")


def best_run(runs: pd.DataFrame, model: str | None = None, select_by: str = "val_nll") -> pd.Series | None:
    """The completed run (of one model) with the best validation NLL — chosen on validation, not test."""
    ok = completed(runs)
    if model is not None:
        ok = ok[ok["model"] == model]
    ok = ok[pd.to_numeric(ok[select_by], errors="coerce").notna()]
    if ok.empty:
        return None
    higher = metric_info(select_by).higher_is_better
    idx = ok[select_by].astype(float).idxmax() if higher else ok[select_by].astype(float).idxmin()
    return ok.loc[idx]
