"""Loading and aggregating run outputs: the one implementation behind `src.report` and `analysis/`.

Reads only files (docs/CONTRACT.md): each run directory's `results.json`, `.hydra/config.yaml`,
`metrics.csv` and images (Optuna trials too: results.json carries `trial` and `params`, and the job's
`.hydra/hydra.yaml` the sweeper's direction and search space). Nothing here imports torch, so
notebooks and the report start fast.

Statistics are over completed runs only. Failed, interrupted, still-running (or SIGKILLed) and
unreadable runs stay in the run table with their status and are excluded from every mean, CI and test.

Main entry points:
    load_runs(path)               -> one row per run (config columns, every result key, status, ...)
    summarize(runs)               -> grouped over seeds: mean, std, 95% CI (t), n per metric
    paired_comparisons(runs, m)   -> model vs model on the same seeds: paired t-test per context
    verdict(runs, ...)            -> sentences written from the data
    optuna_studies(runs)          -> the Optuna sweeps among the runs, one trials table each
    param_importances(study)      -> each searched parameter's importance for the objective
    plot_* functions              -> seaborn figures (each returns a matplotlib Figure)
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import yaml
from scipy import stats

# --------------------------------------------------------------------------------------------------
# Vocabulary

#: Keys of results.json (docs/CONTRACT.md; the same list as src.pipeline.RESULT_KEYS, kept here so
#: that reading results does not import torch; tests check that the two agree).
RESULT_KEYS = ["status", "model", "prior", "K", "dataset", "seed", "reg_weight", "latent_dim", "variant", "network",
               "weights", "lr", "epochs", "epochs_run", "best_epoch", "stopped_early", "test_nll", "test_nll_sem",
               "test_recon", "test_reg", "val_nll", "acc", "nmi", "ari", "acc_mapping", "n_clusters_used",
               "val_acc", "is_samples", "train_seconds", "compile_seconds", "eval_seconds", "n_params", "device", "error",
               "constraint", "target_recon", "pretrain_epochs", "n_test",
               *[f"fewlabel_{kind}_{n}" for kind in ("lr", "comp") for n in (1, 10, 100)]]

#: Configuration columns of results.json and the config path each comes from.
CONFIG_COLUMNS = {
    "model": "model.name", "prior": "prior.name", "K": "prior.K", "dataset": "dataset.name",
    "reg_weight": "model.reg_weight", "latent_dim": "model.latent_dim", "variant": "model.variant",
    "network": "model.network", "weights": "prior.weights", "lr": "optimizer.lr", "epochs": "trainer.epochs",
    "is_samples": "eval.is_samples", "seed": "trainer.seed", "constraint": "model.constraint",
    "target_recon": "model.target_recon", "pretrain_epochs": "trainer.pretrain_epochs",
}
#: Config entries that do not change what is learned (or only how fast): never grouping keys (nor are
#: hydra.* and sweep.*, which name the sweep, not the model).
NOT_GROUPING = {"trainer.threads", "trainer.compile", "trainer.progress", "trainer.device", "trainer.checkpoint",
                "trainer.resume", "eval.images", "eval.n_images", "eval.is_chunk", "eval.is_batch", "dataset.root",
                "dataset.download"}

COMPLETED = "completed"
INVALID = "invalid"  # a completed run whose results.json has a value of the wrong kind (e.g. test_nll "abc")
STATUS_ORDER = ["completed", "failed", "interrupted", "running", "no results.json", "unreadable", INVALID]

#: results.json keys that must be numbers (or null) for a run to count; the integer ones must fit int64.
INT_KEYS = ["K", "seed", "latent_dim", "epochs", "epochs_run", "best_epoch", "n_clusters_used", "is_samples",
            "n_params", "job_num", "trial", "n_test"]
FLOAT_KEYS = ["reg_weight", "lr", "test_nll", "test_nll_sem", "test_recon", "test_reg", "val_nll", "acc", "nmi", "ari",
              "val_acc", "train_seconds", "eval_seconds", "compile_seconds", "target_recon",
              *(f"fewlabel_{kind}_{n}" for kind in ("lr", "comp") for n in (1, 10, 100))]


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
    **{f"fewlabel_{kind}_{n}": Metric(f"fewlabel_{kind}_{n}", f"few-label {what} ({n}/class)", "", True)
       for kind, what in (("lr", "LR"), ("comp", "components")) for n in (1, 10, 100)},
}
SUMMARY_METRICS = ["test_nll", "val_nll", "test_recon", "test_reg", "acc", "nmi", "ari", "n_clusters_used",
                   "fewlabel_lr_1", "fewlabel_lr_10", "fewlabel_lr_100", "fewlabel_comp_1", "fewlabel_comp_10",
                   "fewlabel_comp_100", "epochs_run", "best_epoch", "train_seconds"]
VERDICT_METRICS = ["test_nll", "acc", "nmi"]

# --------------------------------------------------------------------------------------------------
# Finding and loading runs


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def is_run_dir(path: Path) -> bool:
    return (path / "results.json").is_file() or (path / ".hydra" / "config.yaml").is_file()


def find_run_dirs(root: Path) -> list[Path]:
    """Every run directory at or below root (a run dir holds results.json or .hydra/config.yaml)."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if here != root and is_run_dir(here):
            found.append(here)
            dirnames[:] = []  # runs do not nest
            continue
        dirnames[:] = [d for d in dirnames if d not in ("checkpoints", ".hydra", "__pycache__", ".git")]
    return sorted(found, key=_natural_key)


def newest_sweep(outputs="outputs") -> Optional[Path]:
    """The sweep directory under outputs/multirun holding the most recently written run (None if none)."""
    base = Path(outputs) / "multirun"
    runs = find_run_dirs(base) if base.is_dir() else []
    if not runs:
        return None
    newest = max(runs, key=lambda d: (d / "results.json").stat().st_mtime if (d / "results.json").exists()
                 else d.stat().st_mtime)
    return newest.parent


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _read_yaml(path: Path) -> Optional[dict]:
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None


def load_run(run_dir: Path, root: Optional[Path] = None) -> tuple[dict, dict]:
    """One run: (row, flattened .hydra config). Never raises for a broken run: the status says why."""
    run_dir = Path(run_dir)
    rel = os.path.relpath(run_dir, root) if root is not None else run_dir.name
    row: dict = {"run": "." if rel == "." else rel}
    raw_cfg = _read_yaml(run_dir / ".hydra" / "config.yaml")
    cfg = {k: _hashable(v) for k, v in flatten(raw_cfg if isinstance(raw_cfg, dict) else {}).items()}
    res_path = run_dir / "results.json"
    if res_path.is_file():
        try:
            results = json.loads(res_path.read_text())
            if not isinstance(results, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            results = {"status": "unreadable", "error": f"results.json unreadable: {e}"}
        row["last_update"] = res_path.stat().st_mtime
    else:
        results = {"status": "no results.json",
                   "error": "no results.json: the run never started (or was killed before writing it)"}
    # Every contract key (None when missing), then any other key (sweep, study, trial, params, ...).
    # Lists (overrides, images) become space-separated text, dicts (params) JSON text.
    for key in RESULT_KEYS + [k for k in results if k not in RESULT_KEYS]:
        v = results.get(key)
        row[key] = " ".join(map(str, v)) if isinstance(v, list) else json.dumps(v) if isinstance(v, dict) else v
    for col, path in CONFIG_COLUMNS.items():  # fill what results.json lacks from .hydra/config.yaml
        if row.get(col) is None and path in cfg:
            row[col] = cfg[path]
    problems = _bad_values(row)
    for key in problems:
        row[key] = None  # kept out of every number and column type; the reason goes to the error column
    if problems:
        note = "bad value: " + "; ".join(problems.values())
        if row.get("status") == COMPLETED:
            row["status"], row["error"] = INVALID, note
        else:
            row["error"] = f"{row['error']}; {note}" if row.get("error") else note
    if row.get("error") is not None and not isinstance(row["error"], str):
        row["error"] = str(row["error"])
    if row.get("status") is not None and not isinstance(row["status"], str):
        row["status"] = "unreadable"
    row["run_dir"] = str(run_dir.resolve())
    if row["status"] is None:
        row["status"] = "unreadable"
    return row, cfg


def _bad_values(row: dict) -> dict:
    """key -> why, for each numeric value of a run of the wrong kind (text, list, bool, an integer key
    with a fraction, an integer too large for int64)."""
    out = {}
    for key in INT_KEYS + FLOAT_KEYS:
        v = row.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            out[key] = f"{key}={v!r} is not a number"
        elif key in INT_KEYS and (isinstance(v, float) and not v.is_integer() or not -2**63 <= v < 2**63):
            out[key] = f"{key}={v!r} is not a 64-bit integer"
    return out


def _hashable(v):
    """Config values as table cells: lists and dicts (e.g. tags=[baseline]) as JSON text."""
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def _progress(items: Sequence, desc: str, enabled: bool):
    """A tqdm bar on stderr when enabled (plain lines every 10% when stderr is not a terminal)."""
    if not enabled or len(items) < 2:
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, desc=desc, unit="run", file=sys.stderr, leave=False)
        return
    n, step, t0 = len(items), max(1, len(items) // 10), time.time()
    for i, item in enumerate(items, 1):
        yield item
        if (n >= 200 and i % step == 0) or i == n:
            print(f"{desc}: {i}/{n} runs ({time.time() - t0:.1f}s)", file=sys.stderr, flush=True)


class NoRunsError(Exception):
    """The directory holds no run (no results.json or .hydra/config.yaml anywhere below it)."""


def load_runs(path, progress: bool = True) -> pd.DataFrame:
    """One row per run below `path`: every results.json key, config columns, status, and the config
    entries that vary between runs (as `cfg.<path>` columns, e.g. `cfg.trainer.batch_size`).

    Raises NoRunsError when there is no run below path.
    """
    root = Path(path)
    if not root.exists():
        raise NoRunsError(f"{root} does not exist")
    dirs = find_run_dirs(root)
    if not dirs:
        raise NoRunsError(f"no runs under {root} (looked for results.json or .hydra/config.yaml in its subdirectories)")
    if progress:
        print(f"reading {len(dirs)} run director{'y' if len(dirs) == 1 else 'ies'} under {root}", file=sys.stderr)
    rows, cfgs = [], []
    for d in _progress(dirs, "reading runs", progress):
        row, cfg = load_run(d, root)
        rows.append(row)
        cfgs.append(cfg)
    df = pd.DataFrame(rows)
    # Config entries that vary between runs and are not already a column: searched parameters of a
    # sweep (batch size, hidden width, ...) must be visible and must split groups.
    covered = set(CONFIG_COLUMNS.values()) | NOT_GROUPING
    cfg_df = pd.DataFrame(cfgs, index=df.index)
    extra = [c for c in cfg_df.columns if c not in covered and not c.startswith(("hydra.", "sweep."))
             and cfg_df[c].astype(str).nunique(dropna=False) > 1]
    for c in extra:
        df[f"cfg.{c}"] = cfg_df[c]
    df["last_update"] = pd.to_datetime(df["last_update"], unit="s", utc=True) if "last_update" in df else pd.NaT
    for col in INT_KEYS:
        if col in df:  # job_num, trial: only multirun jobs have them
            df[col] = _as_int(df[col])
    return df


def _as_int(s: pd.Series) -> pd.Series:
    v = pd.to_numeric(s, errors="coerce")
    ok = v.dropna()
    if len(ok) and (ok % 1 == 0).all() and ok.abs().max() < 2**63:
        return v.astype("Int64")
    return v


def completed(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == COMPLETED]


def excluded(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] != COMPLETED]


def status_counts(runs: pd.DataFrame) -> dict:
    counts = runs["status"].value_counts().to_dict()
    order = [s for s in STATUS_ORDER if s in counts] + sorted(s for s in counts if s not in STATUS_ORDER)
    return {s: int(counts[s]) for s in order}


# --------------------------------------------------------------------------------------------------
# Grouping keys and labels


def candidate_keys(runs: pd.DataFrame) -> list[str]:
    """Configuration columns (without seed) that can define a group."""
    keys = [c for c in CONFIG_COLUMNS if c != "seed" and c in runs]
    return keys + [c for c in runs.columns if c.startswith("cfg.")]


def varying_keys(runs: pd.DataFrame, keys: Optional[Iterable[str]] = None) -> list[str]:
    """The keys whose value differs between the given runs."""
    keys = candidate_keys(runs) if keys is None else list(keys)
    return [k for k in keys if k in runs and runs[k].astype(str).nunique(dropna=False) > 1]


def group_keys(runs: pd.DataFrame) -> list[str]:
    """Grouping keys for seeds-as-replicates: the configuration columns that vary among completed runs
    (always including model and K when present, so labels stay readable)."""
    ok = completed(runs)
    keys = varying_keys(ok if len(ok) else runs)
    for k in ("K", "model"):
        if k in runs and k not in keys:
            keys.insert(0, k)
    order = candidate_keys(runs)
    return sorted(keys, key=order.index)


def _fmt_value(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{v:g}"
    return str(v)


def short_key(key: str, model: Optional[str] = None) -> str:
    if key == "reg_weight":
        return {"csrae": "λ", "vae": "β"}.get(str(model), "β/λ")
    return key[4:].split(".")[-1] if key.startswith("cfg.") else key


def config_label(values: dict, keys: Sequence[str]) -> str:
    """'csrae, K=10, λ=0.5' from the key values (model and categorical names without 'key=')."""
    parts = []
    model = values.get("model")
    for k in keys:
        v = values.get(k)
        if k in ("model", "prior", "dataset", "network", "variant", "weights"):
            parts.append(_fmt_value(v))
        else:
            parts.append(f"{short_key(k, model)}={_fmt_value(v)}")
    return ", ".join(parts) if parts else "all runs"


# --------------------------------------------------------------------------------------------------
# Statistics


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


def summarize(runs: pd.DataFrame, metrics: Optional[Sequence[str]] = None,
              by: Optional[Sequence[str]] = None) -> pd.DataFrame:
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
    return {"n": n, "seeds": " ".join(map(str, common)), "mean_a": float(a.loc[common].mean()) if n else np.nan,
            "mean_b": float(b.loc[common].mean()) if n else np.nan, "diff": s["mean"], "diff_std": s["std"],
            "diff_ci95": s["ci95"], "t": t_stat, "p": p}


def _per_seed(g: pd.DataFrame, metric: str) -> pd.Series:
    """Metric per seed (duplicate runs of one seed, e.g. from two sweeps, are averaged)."""
    v = g[["seed", metric]].dropna()
    return v.groupby("seed")[metric].mean().astype(float)


def paired_comparisons(runs: pd.DataFrame, metric: str, between: str = "model") -> pd.DataFrame:
    """For each context (all other grouping keys equal), every pair of `between` values compared on
    the seeds both have: mean difference (a − b), its 95% CI, paired t-test p and Holm-adjusted p over
    the rows of this table. `better` names the value with the better mean for this metric."""
    ok = completed(runs)
    ok = ok[pd.to_numeric(ok[metric], errors="coerce").notna()] if metric in ok else ok.iloc[0:0]
    keys = [k for k in group_keys(runs) if k != between]
    cols = keys + ["a", "b", "n", "seeds", "mean_a", "mean_b", "diff", "diff_std", "diff_ci95", "t", "p", "p_holm",
                   "better", "significant", "metric"]
    if ok.empty or between not in ok:
        return pd.DataFrame(columns=cols)
    higher = METRICS[metric].higher_is_better if metric in METRICS else False
    rows = []
    groups = ok.groupby(keys, dropna=False, sort=True) if keys else [((), ok)]
    for ctx, g in groups:
        ctx = ctx if isinstance(ctx, tuple) else (ctx,)
        values = sorted(g[between].dropna().unique(), key=_sort_key)
        for a, b in combinations(values, 2):
            r = paired_test(_per_seed(g[g[between] == a], metric), _per_seed(g[g[between] == b], metric))
            if r["n"] == 0:
                continue
            better = None
            if np.isfinite(r["diff"]) and r["diff"] != 0:
                better = a if (r["diff"] > 0) == higher else b
            rows.append({**dict(zip(keys, ctx)), "a": a, "b": b, **r, "better": better, "metric": metric})
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
    higher = METRICS[metric].higher_is_better if metric in METRICS else False
    return s.sort_values(col, ascending=not higher, kind="stable")


def best_run(runs: pd.DataFrame, model: Optional[str] = None, select_by: str = "val_nll") -> Optional[pd.Series]:
    """The completed run (of one model) with the best validation NLL — chosen on validation, not test."""
    ok = completed(runs)
    if model is not None:
        ok = ok[ok["model"] == model]
    ok = ok[pd.to_numeric(ok[select_by], errors="coerce").notna()]
    if ok.empty:
        return None
    higher = METRICS[select_by].higher_is_better if select_by in METRICS else False
    idx = ok[select_by].astype(float).idxmax() if higher else ok[select_by].astype(float).idxmin()
    return ok.loc[idx]


# --------------------------------------------------------------------------------------------------
# The verdict


def _num(v: float, digits: int = 2) -> str:
    return "nan" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def _p(p: float) -> str:
    if not np.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def _digits(metric: str) -> int:
    if metric in ("acc", "nmi", "ari") or metric.startswith("fewlabel_"):
        return 3
    return 2 if METRICS.get(metric, Metric(metric, metric, "", False)).unit == "nats" else 1


def _unit(metric: str) -> str:
    u = METRICS[metric].unit if metric in METRICS else ""
    return f" {u}" if u else ""


def describe_comparison(row: pd.Series, metric: str, keys: Sequence[str]) -> str:
    """One sentence for a paired comparison row: honest about n and significance."""
    m = METRICS[metric]
    ctx = config_label(row.to_dict(), [k for k in keys if k not in ("model",)])
    where = f"{ctx}: " if ctx != "all runs" else ""
    n, dg, unit = int(row["n"]), _digits(metric), _unit(metric)
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    if n < 2:
        return (f"{where}{row['a']} vs {row['b']} on {m.label}: only {seeds} in common "
                f"({row['a']} {_num(row['mean_a'], dg)}, {row['b']} {_num(row['mean_b'], dg)}); "
                f"too few seeds to tell.")
    if row["better"] is None or pd.isna(row["better"]):
        return f"{where}{row['a']} and {row['b']} tie on {m.label} over {seeds} ({_num(row['mean_a'], dg)})."
    winner, loser = row["better"], (row["b"] if row["better"] == row["a"] else row["a"])
    diff = abs(row["diff"])
    ci = row["diff_ci95"]
    pm = f" ± {_num(ci, dg)}" if np.isfinite(ci) else ""
    p_txt = _p(row["p"])
    if np.isfinite(row["p_holm"]) and row["p_holm"] != row["p"]:
        p_txt += f", Holm-adjusted {_p(row['p_holm'])[2:]}"
    verb = "beats" if row["significant"] else "is ahead of"
    s = f"{where}{winner} {verb} {loser} on {m.label} by {_num(diff, dg)}{pm}{unit} ({p_txt}, {seeds})"
    if row["significant"]:
        return s + (": significant, but with only 2 seeds treat it as preliminary." if n < 3 else ": significant.")
    if n < 3:
        return s + ": not significant, and too few seeds to tell."
    return s + ": not significant."


def verdict(runs: pd.DataFrame, summary: Optional[pd.DataFrame] = None,
            comparisons: Optional[dict] = None) -> list[tuple[str, list[str]]]:
    """The verdict written from the data, as sections: [(title, [sentence, ...]), ...].

    "Runs" (what was run and what was excluded), one section per metric of VERDICT_METRICS (best
    configuration and how clearly it leads, then every paired model comparison on common seeds),
    and "Caveats" (what the data says about how far to trust it).
    """
    sections: list[tuple[str, list[str]]] = []
    counts = status_counts(runs)
    ok = completed(runs)
    n_ex = len(runs) - len(ok)
    head = f"{len(runs)} run{'s' if len(runs) != 1 else ''}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
    if n_ex:
        head += (f"; the {n_ex} not completed {'is' if n_ex == 1 else 'are'} listed under Excluded runs and left out "
                 "of all statistics")
    overview = [head + "."]
    sections.append(("Runs", overview))
    if ok.empty:
        overview.append("No completed run: nothing to compare.")
        return sections
    summary = summarize(runs) if summary is None else summary
    keys = group_keys(runs)
    seeds_per = summary["n_runs"]
    datasets = ", ".join(sorted(map(str, ok["dataset"].dropna().unique())))
    design = " × ".join(_values_text(ok, k) for k in keys if ok[k].nunique() > 1)
    fixed = ", ".join(f"{short_key(k)}={_fmt_value(ok[k].iloc[0])}" for k in ("prior", "K", "reg_weight", "latent_dim",
                                                                            "epochs", "is_samples")
                      if k in ok and ok[k].nunique(dropna=False) == 1)
    overview.append(f"{len(summary)} configuration{'s' if len(summary) != 1 else ''} on {datasets}"
                    + (f" ({design})" if design else "") + (f", all with {fixed}" if fixed else "")
                    + f"; {_range_text(seeds_per)} completed seed{'s' if seeds_per.max() != 1 else ''} each. "
                    "± below is the 95% confidence half-width (t distribution); p-values are from paired t-tests "
                    "on the seeds both sides share.")

    comparisons = comparisons if comparisons is not None else {m: paired_comparisons(runs, m) for m in VERDICT_METRICS}
    for metric in VERDICT_METRICS:
        if f"{metric}_mean" not in summary:
            continue
        m, dg = METRICS[metric], _digits(metric)
        title = m.label[0].upper() + m.label[1:]
        ranked = best_configs(summary, metric)
        if ranked.empty:
            if metric == "acc":
                sections.append(("Clustering", ["No clustering metrics: every completed run has K = 1 "
                                                "(one component has nothing to cluster)."]))
            continue
        lines: list[str] = []
        best = ranked.iloc[0]
        ci = best[f"{metric}_ci95"]
        ci_txt = (f"95% CI {_num(best[f'{metric}_ci_low'], dg)} to {_num(best[f'{metric}_ci_high'], dg)}"
                  if np.isfinite(ci) else "no CI")
        s = (f"Best {m.label}: {config_label(best.to_dict(), keys)} with {_num(best[f'{metric}_mean'], dg)}"
             f"{_unit(metric)} ({ci_txt}, n = {int(best[f'{metric}_n'])})")
        if len(ranked) > 1:
            second = ranked.iloc[1]
            s += f"; runner-up {config_label(second.to_dict(), keys)} with {_num(second[f'{metric}_mean'], dg)}"
            s += _separation(runs, best, second, metric, keys)
        lines.append(s + ".")
        table = comparisons.get(metric)
        if table is not None and not table.empty:
            for _, row in table.iterrows():
                lines.append(describe_comparison(row, metric, keys))
            if len(table) > 1:
                n_sig = int(table["significant"].sum())
                lines.append(f"{n_sig} of {len(table)} paired {m.label} comparisons significant at 0.05 after Holm "
                             "correction for the comparisons in this section.")
        sections.append((title, lines))
    cav = caveats(runs, summary)
    if cav:
        sections.append(("Caveats", cav))
    return sections


def verdict_markdown(sections: list[tuple[str, list[str]]]) -> str:
    """The verdict sections as Markdown (a bold title and bullets per section)."""
    parts = []
    for title, lines in sections:
        parts.append(f"**{title}**\n\n" + "\n".join(f"- {line}" for line in lines))
    return "\n\n".join(parts) + "\n"


def _values_text(df: pd.DataFrame, key: str, most: int = 6) -> str:
    """'K ∈ {1, 5, 10}', or 'K: 20 values from 1 to 50' when there are many."""
    vals = sorted(df[key].dropna().unique(), key=_sort_key)
    if len(vals) <= most:
        return f"{short_key(key)} ∈ {{{', '.join(_fmt_value(v) for v in vals)}}}"
    return f"{short_key(key)}: {len(vals)} values from {_fmt_value(vals[0])} to {_fmt_value(vals[-1])}"


def _sort_key(v):
    return (0, float(v), "") if isinstance(v, (int, float, np.integer, np.floating)) else (1, 0.0, str(v))


def _range_text(n: pd.Series) -> str:
    lo, hi = int(n.min()), int(n.max())
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _separation(runs: pd.DataFrame, best: pd.Series, second: pd.Series, metric: str, keys: Sequence[str]) -> str:
    """Is the best distinguishable from the runner-up? Paired test on common seeds when possible (not
    corrected for having picked the best; when the two differ only in the model, the paired model
    comparison below says it, with Holm correction)."""
    if all(best[k] == second[k] for k in keys if k != "model"):
        return " (compared below)"
    ok = completed(runs)

    def select(row):
        mask = pd.Series(True, index=ok.index)
        for k in keys:
            v = row[k]
            mask &= ok[k].isna() if pd.isna(v) else (ok[k] == v)
        return ok[mask]

    r = paired_test(_per_seed(select(best), metric), _per_seed(select(second), metric))
    if r["n"] >= 2 and np.isfinite(r["p"]):
        return (f" — paired difference {_num(abs(r['diff']), _digits(metric))} ({_p(r['p'])} over {r['n']} seeds, "
                "not corrected for picking the best)")
    lo1, hi1 = best[f"{metric}_ci_low"], best[f"{metric}_ci_high"]
    lo2, hi2 = second[f"{metric}_ci_low"], second[f"{metric}_ci_high"]
    if all(np.isfinite([lo1, hi1, lo2, hi2])):
        return " — their 95% CIs overlap, so the order is not established" if (lo1 <= hi2 and lo2 <= hi1) else \
            " — their 95% CIs do not overlap"
    return " — too few seeds to tell them apart"


def caveats(runs: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """Things a reader must know before trusting the numbers, detected in the data."""
    ok = completed(runs)
    out = []
    n = summary["n_runs"] if "n_runs" in summary else pd.Series(dtype=int)
    if len(n) and n.max() == 1:
        out.append("One seed per configuration: no confidence intervals or tests are possible, and differences "
                   "may be seed noise.")
    elif len(n) and n.max() < 3:
        out.append(f"With at most {int(n.max())} seeds per configuration, confidence intervals are wide or "
                   "undefined and only large differences can reach significance.")
    s = ok["is_samples"].dropna()
    if len(s) and s.min() < 1000:
        out.append(f"Test NLL uses S = {_range_text(s)} importance samples per point; the estimate is an upper bound "
                   "that loosens as S shrinks (the literature protocol uses S = 5000).")
    still = ok[(ok["best_epoch"].notna()) & (ok["best_epoch"] == ok["epochs_run"]) & (ok["stopped_early"] != True)]  # noqa: E712
    if len(ok) and len(still) / len(ok) >= 0.5:
        out.append(f"{len(still)} of {len(ok)} completed runs had their best validation loss at the last epoch "
                   f"({_range_text(ok['epochs_run'].dropna())} epochs): they were still improving, and longer training "
                   "may change the ranking.")
    clust = ok[(ok["K"].fillna(1) > 1) & ok["n_clusters_used"].notna()]
    if len(clust):
        for keys, g in clust.groupby(["model", "K"], sort=True):
            used, K = g["n_clusters_used"].astype(float).mean(), int(keys[1])
            if used <= max(1.0, K / 2):
                out.append(f"{keys[0]}, K={K}: test points are assigned to only {used:.1f} of {K} components on "
                           f"average, so its clustering scores describe a collapsed assignment.")
    if "acc_mapping" in ok and (ok["acc_mapping"] == "many_to_one").any():
        out.append("ACC for K above the number of classes uses a many-to-one majority mapping, which favours "
                   "large K; compare ACC across K with care (NMI and ARI are not mapped).")
    if ok["model"].nunique() > 1 and "test_reg" in ok:
        out.append("Regulariser values (test_reg) and training losses are KL for vae and Cauchy–Schwarz divergence "
                   "for csrae: they are not comparable across models; NLL and reconstruction are.")
    return out


# --------------------------------------------------------------------------------------------------
# Per-epoch curves and Optuna studies


def load_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """metrics.csv of every completed run, long: one row per (run, epoch) with the run's config columns."""
    frames = []
    keys = ["run", "seed"] + candidate_keys(runs)
    for _, r in completed(runs).iterrows():
        path = Path(r["run_dir"]) / "metrics.csv"
        try:
            m = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            continue
        for k in keys:
            m[k] = r[k]
        frames.append(m)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _job_configs(run_dir) -> tuple[dict, dict]:
    """(config.yaml, hydra.yaml's `hydra` node) of one job, {} where missing."""
    d = Path(run_dir) / ".hydra"
    return _read_yaml(d / "config.yaml") or {}, (_read_yaml(d / "hydra.yaml") or {}).get("hydra") or {}


def _params_of(row: pd.Series) -> dict:
    """The trial's sampled parameters (results.json `params`, kept as JSON text in the run table)."""
    p = row.get("params")
    try:
        p = json.loads(p) if isinstance(p, str) else p
    except ValueError:
        return {}
    return p if isinstance(p, dict) else {}


@dataclass
class OptunaStudy:
    sweep_dir: Path
    name: Optional[str]
    trials: pd.DataFrame          # number, value, state, run, status, and one column per parameter
    params: list[str]
    objective: str                # the results.json key the trials returned (first objective)
    direction: str                # minimize | maximize
    log_params: set               # parameters searched on a log scale
    space: dict = field(default_factory=dict)  # hydra.sweeper.params: parameter -> search-space text

    @property
    def best(self) -> Optional[pd.Series]:
        done = self.trials[self.trials["value"].notna()]
        if done.empty:
            return None
        return done.loc[done["value"].idxmin() if self.direction == "minimize" else done["value"].idxmax()]


def optuna_studies(runs: pd.DataFrame) -> list[OptunaStudy]:
    """The Optuna sweeps among the runs: jobs whose results.json has a trial number, grouped by sweep
    directory (the parent of the job dir). Built from the job directories alone, so an interrupted
    sweep (no trials.csv, no optimization_results.yaml) still shows every trial it ran."""
    if "trial" not in runs:
        return []
    opt = runs[runs["trial"].notna()]
    return [load_optuna(g) for _, g in opt.groupby(opt["run_dir"].map(lambda d: str(Path(d).parent)), sort=True)]


def load_optuna(runs: pd.DataFrame) -> OptunaStudy:
    """One Optuna sweep from its jobs' rows: trial = results.json `trial`, parameters = `params`,
    value = the sweep's first objective (`sweep.objectives`, default val_nll) for completed jobs,
    state COMPLETE or FAIL; direction and log-scaled parameters from the sweeper config in .hydra/."""
    first = runs.iloc[0]
    cfg, hydra_cfg = _job_configs(first["run_dir"])
    sweeper = hydra_cfg.get("sweeper") or {}
    direction = sweeper.get("direction", "minimize")
    direction = str(direction[0] if isinstance(direction, list) else direction).lower().replace("studydirection.", "")
    space = sweeper.get("params") or {}
    objectives = ((cfg.get("sweep") or {}).get("objectives")) or ["val_nll"]
    objective = str(objectives[0])
    rows = []
    for _, r in runs.iterrows():
        ok = r["status"] == COMPLETED
        value = pd.to_numeric(r.get(objective), errors="coerce") if ok else np.nan
        rows.append({"number": int(r["trial"]), "value": value, "state": "COMPLETE" if ok else "FAIL",
                     "status": r["status"], "run": r["run"], **_params_of(r)})
    trials = pd.DataFrame(rows).sort_values("number", kind="stable").reset_index(drop=True)
    params = [c for c in trials.columns if c not in ("number", "value", "state", "status", "run")]
    return OptunaStudy(Path(first["run_dir"]).parent, first.get("study"), trials, params, objective, direction,
                       {k for k, v in space.items() if "log" in str(v)}, dict(space))


IMPORTANCE_EVALUATOR = "optuna.importance.MeanDecreaseImpurityImportanceEvaluator"


def param_importances(study: OptunaStudy, seed: int = 0) -> pd.DataFrame:
    """Each searched parameter's importance for the study's (first) objective over its completed trials.

    Optuna's mean-decrease-impurity evaluator (IMPORTANCE_EVALUATOR: a random forest on the trials'
    parameters; seeded, so the numbers repeat) on an in-memory copy of the trials, with the search
    space parsed by the sweeper plugin itself. optuna 2.10's default, fANOVA, fails with today's
    scikit-learn. Columns: parameter, importance (summing to 1), sorted. Empty when fewer than two
    completed trials have every searched parameter.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, IntUniformDistribution, IntLogUniformDistribution
    from optuna.importance import MeanDecreaseImpurityImportanceEvaluator, get_param_importances

    try:  # hydra-optuna-sweeper 1.4 moved the parser
        from hydra_plugins.hydra_optuna_sweeper._distributions import create_params_from_overrides
    except ImportError:
        from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    searched, _ = create_params_from_overrides([f"{k}={v}" for k, v in study.space.items()])
    dists = {k: d for k, d in searched.items() if k in study.params}
    empty = pd.DataFrame(columns=["parameter", "importance"])
    done = study.trials[study.trials["value"].notna()].dropna(subset=list(dists))
    if not dists or len(done) < 2:
        return empty

    def cast(d, v):
        if isinstance(d, (IntUniformDistribution, IntLogUniformDistribution)):
            return int(v)
        return str(v) if isinstance(d, CategoricalDistribution) else float(v)

    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():  # create_trial, add_trial and the evaluator are "experimental" in 2.10
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        copy = optuna.create_study(direction=study.direction)
        for _, t in done.iterrows():
            copy.add_trial(optuna.trial.create_trial(params={k: cast(d, t[k]) for k, d in dists.items()},
                                                     distributions=dists, value=float(t["value"])))
        imp = get_param_importances(copy, evaluator=MeanDecreaseImpurityImportanceEvaluator(seed=seed))
    return pd.DataFrame({"parameter": list(imp), "importance": [float(v) for v in imp.values()]})


# --------------------------------------------------------------------------------------------------
# Figures (seaborn). Each returns a Figure; the caller saves or shows it.

PALETTE = "colorblind"


def _plt():
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", palette=PALETTE)
    return plt, sns


def _model_colors(models: Sequence[str]) -> dict:
    _, sns = _plt()
    pal = sns.color_palette(PALETTE, max(len(models), 3))
    return {m: pal[i] for i, m in enumerate(sorted(models, key=str))}


MAX_PANELS = 4  # more settings than this besides model and K (an Optuna search): one panel of single runs


def _panels(summary: pd.DataFrame, keys: Sequence[str]) -> tuple[list[str], list]:
    """The settings other than model and K, and their value combinations: one panel column each.
    ([], [()]) when there are none, more than MAX_PANELS, or no panel would hold two values of K."""
    fk = [k for k in keys if k not in ("model", "K")]
    if not fk:
        return [], [()]
    vals = list(summary[fk].drop_duplicates().sort_values(fk).itertuples(index=False, name=None))
    several_k = any(_select(summary, fk, v)["K"].nunique() > 1 for v in vals)
    return (fk, vals) if len(vals) <= MAX_PANELS and several_k else ([], [()])


def _select(df: pd.DataFrame, keys: Sequence[str], values: tuple) -> pd.DataFrame:
    mask = pd.Series(True, index=df.index)
    for k, v in zip(keys, values):
        mask &= df[k].isna() if pd.isna(v) else (df[k] == v)
    return df[mask]


def plot_metric_vs_k(runs: pd.DataFrame, metrics: Sequence[str] = ("test_nll",),
                     summary: Optional[pd.DataFrame] = None, min_k: int = 0):
    """Each metric (one row of panels) against K, one colour per model: mean over seeds with its 95%
    t-interval (band, or error bar at a single K) and every run as a dot. Other settings that vary
    (prior, λ/β, ...) get one panel column each; with more than MAX_PANELS combinations (a random or
    Optuna search) only the single runs are drawn, since no two share a configuration."""
    sub = runs[runs["K"].fillna(1) > min_k] if min_k else runs
    ok = completed(sub)
    summary = summarize(sub) if summary is None else summary[summary["K"].fillna(1) > min_k]
    metrics = [m for m in metrics if f"{m}_mean" in summary and summary[f"{m}_mean"].notna().any()]
    if not metrics:
        return None
    plt, _ = _plt()
    keys = group_keys(sub)
    fk, facets = _panels(summary, keys)
    means = len(fk) > 0 or len([k for k in keys if k not in ("model", "K")]) == 0
    colors = _model_colors(ok["model"].dropna().unique())
    rows, cols = (1, len(metrics)) if len(facets) == 1 else (len(metrics), len(facets))  # one column: side by side
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols + 1.0, 3.8 * rows), squeeze=False)
    axes = axes.reshape(len(metrics), len(facets))
    ks = sorted(ok["K"].dropna().unique())
    for i, metric in enumerate(metrics):
        m = METRICS.get(metric, Metric(metric, metric, "", False))
        for j, fv in enumerate(facets):
            ax = axes[i][j]
            s, pts = _select(summary, fk, fv), _select(ok, fk, fv)
            for model in sorted(pts["model"].dropna().unique(), key=str):
                c = colors[model]
                g = s[(s["model"] == model) & s[f"{metric}_mean"].notna()].sort_values("K")
                if means and not g.empty:
                    x, lo, hi = g["K"].astype(float), g[f"{metric}_ci_low"], g[f"{metric}_ci_high"]
                    ax.plot(x, g[f"{metric}_mean"], marker="o", color=c, lw=2, label=f"{model}: mean, 95% CI")
                    if len(g) > 1:
                        ax.fill_between(x, lo, hi, color=c, alpha=0.2, lw=0)
                    else:
                        ax.errorbar(x, g[f"{metric}_mean"], yerr=g[f"{metric}_ci95"].fillna(0), color=c, capsize=5)
                p = pts[(pts["model"] == model) & pts[metric].notna()]
                ax.scatter(p["K"].astype(float), p[metric].astype(float), color=c, s=16, alpha=0.7,
                           edgecolor="white", linewidth=0.5, zorder=3, label=None if means else f"{model}: runs")
            if len(ks) > 1 and min(ks) > 0 and max(ks) / min(ks) >= 20:
                ax.set_xscale("log")
            if len(ks) <= 12:
                ax.set_xticks([float(k) for k in ks], [str(int(k)) for k in ks])
            ax.set_xlabel("K (mixture components)")
            ax.set_ylabel(f"{m.label}{' (' + m.unit + ')' if m.unit else ''}  {'↑' if m.higher_is_better else '↓'} better")
            if metric in ("acc", "nmi", "ari"):
                ax.set_ylim(-0.02, 1.02)
            if fk:
                ax.set_title(config_label(dict(zip(fk, fv)), fk))
            if i == 0 and j == 0:
                ax.legend(loc="best", fontsize=8, frameon=True)
    what = ("mean over seeds, band or bar = 95% t-interval, dots = single runs" if means
            else "single runs (other settings vary between them)")
    fig.suptitle(" and ".join(METRICS.get(mt, Metric(mt, mt, "", False)).label for mt in metrics)
                 + f" vs K: {what}", fontsize=11)
    fig.tight_layout()
    return fig


def plot_rate_distortion(runs: pd.DataFrame):
    """Test reconstruction against test regulariser, one point per completed run, one panel per model
    (the regulariser is KL for vae and D_CS for csrae: different units of strength). Runs under the
    reconstruction constraint are labelled with their κ; the dotted line marks each κ."""
    ok = completed(runs)
    ok = ok[ok["test_recon"].notna() & ok["test_reg"].notna()] if not ok.empty else ok
    if ok.empty:
        return None
    plt, _ = _plt()
    models = sorted(ok["model"].dropna().unique(), key=str)
    colors = _model_colors(models)
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models) + 0.6, 4.0), squeeze=False)
    for ax, model in zip(axes[0], models):
        g = ok[ok["model"] == model]
        ax.scatter(g["test_reg"].astype(float), g["test_recon"].astype(float), color=colors[model], s=24,
                   edgecolor="white", linewidth=0.5, zorder=3)
        if "target_recon" in g:
            for _, r in g[g["target_recon"].notna()].iterrows():
                ax.annotate(f"κ={_fmt_value(r['target_recon'])}", (float(r["test_reg"]), float(r["test_recon"])),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
            for kappa in g["target_recon"].dropna().unique():
                ax.axhline(float(kappa), color=colors[model], lw=0.6, ls=":", alpha=0.6)
        ax.set_xlabel(("KL" if model == "vae" else "D_CS" if model == "csrae" else "regulariser") + " (nats, test)")
        ax.set_ylabel("reconstruction −log p(x|z) (nats, test)")
        ax.set_title(str(model))
    fig.suptitle("Rate-distortion: reconstruction vs regulariser, one point per run", fontsize=11)
    fig.tight_layout()
    return fig


def plot_clustering_vs_k(runs: pd.DataFrame, summary: Optional[pd.DataFrame] = None):
    """ACC and NMI against K, for K > 1 (one component has nothing to cluster)."""
    return plot_metric_vs_k(runs, ("acc", "nmi"), summary, min_k=1)


def plot_val_curves(runs: pd.DataFrame, curves: Optional[pd.DataFrame] = None):
    """Validation reconstruction and validation loss per epoch, one line per model (mean over runs,
    band = ±1 sd), one column per K (and other varying settings)."""
    curves = load_curves(runs) if curves is None else curves
    if curves.empty:
        return None
    plt, sns = _plt()
    keys = group_keys(runs)
    fk = [k for k in keys if k != "model"]
    facets = list(curves[fk].drop_duplicates().sort_values(fk).itertuples(index=False, name=None)) if fk else [()]
    pooled = len(facets) > 2 * MAX_PANELS  # a search: one panel, every run of a model pooled
    if pooled:
        fk, facets = [], [()]
    colors = _model_colors(curves["model"].dropna().unique())
    rows = [("val_recon", "validation reconstruction (nats)"), ("val_loss", "validation loss (own objective)")]
    rows = [r for r in rows if r[0] in curves]
    fig, axes = plt.subplots(len(rows), len(facets), figsize=(4.2 * len(facets) + 1.2, 3.4 * len(rows)),
                             squeeze=False, sharex=True)
    for j, fv in enumerate(facets):
        c = _select(curves, fk, fv)
        for i, (col, label) in enumerate(rows):
            ax = axes[i][j]
            sns.lineplot(data=c, x="epoch", y=col, hue="model", palette=colors, errorbar="sd", ax=ax,
                         legend=(i == 0 and j == 0))
            ax.set_ylabel(label if j == 0 else "")
            ax.xaxis.get_major_locator().set_params(integer=True)
            if i == 0 and fk:
                ax.set_title(config_label(dict(zip(fk, fv)), fk))
            lo, hi = c[col].quantile(0.02), c[col].quantile(0.98)
            if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
                pad = 0.15 * (hi - lo)
                ax.set_ylim(lo - pad, hi + pad)
    over = "all runs of a model, whose settings differ" if pooled else "seeds"
    fig.suptitle(f"Validation curves per epoch (mean over {over}, band = ±1 sd).\nLoss levels differ by objective "
                 "(KL vs CS): compare models on reconstruction", fontsize=10)
    fig.tight_layout()
    return fig


def plot_optuna_history(study: OptunaStudy):
    """Objective per trial, the best so far as a step line, failed trials as grey crosses."""
    plt, _ = _plt()
    t = study.trials
    done, failed = t[t["value"].notna()], t[t["value"].isna()]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    if not done.empty:
        ax.scatter(done["number"], done["value"], s=28, label="trial", zorder=3)
        best = done["value"].cummin() if study.direction == "minimize" else done["value"].cummax()
        ax.step(done["number"], best, where="post", color="C3", lw=2, label="best so far")
    if not failed.empty:
        y = done["value"].min() if not done.empty else 0.0
        ax.scatter(failed["number"], [y] * len(failed), marker="x", color="grey", s=40,
                   label=f"failed ({len(failed)}, drawn at the bottom)", zorder=3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{study.objective} ({study.direction})")
    ax.set_title(f"Optuna optimisation history{': ' + study.name if study.name else ''}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_optuna_params(study: OptunaStudy):
    """Objective against each searched parameter (log axis where the search space is log-scaled)."""
    done = study.trials[study.trials["value"].notna()]
    if not study.params or done.empty:
        return None
    plt, _ = _plt()
    n = len(study.params)
    cols = 2 if n in (2, 4) else min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    best = study.best
    for ax, p in zip(axes.flat, study.params):
        x = pd.to_numeric(done[p], errors="coerce")
        if x.isna().any():  # categorical parameter
            x = done[p].astype(str)
        ax.scatter(x, done["value"], c=done["number"], cmap="viridis", s=30)
        ax.scatter([best[p]] if pd.api.types.is_numeric_dtype(x) else [str(best[p])], [best["value"]],
                   marker="*", s=220, color="C3", zorder=4, label="best")
        if p in study.log_params:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel(p)
    for ax in axes[:, 0]:
        ax.set_ylabel(study.objective)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Objective vs each searched parameter (colour = trial number, dark = early; star = best)",
                 fontsize=11)
    fig.tight_layout()
    return fig


def plot_best_images(runs: pd.DataFrame, image: str = "samples.png", select_by: str = "val_nll"):
    """One image of the best run (by validation NLL) of each model side by side."""
    ok = completed(runs)
    picks = []
    for model in sorted(ok["model"].dropna().unique(), key=str):
        r = best_run(runs, model, select_by)
        if r is not None and (Path(r["run_dir"]) / image).is_file():
            picks.append(r)
    if not picks:
        return None
    plt, _ = _plt()
    from PIL import Image

    imgs = [np.asarray(Image.open(Path(r["run_dir"]) / image).convert("RGB")) for r in picks]
    aspect = max(im.shape[1] / im.shape[0] for im in imgs)
    wide = aspect > 1.5  # wide images (latent scatters) one above the other, square ones side by side
    n = len(picks)
    size = (11.0, 11.0 / aspect * n + 0.8 * n) if wide else (5.0 * n, 5.6)
    fig, axes = plt.subplots(n if wide else 1, 1 if wide else n, figsize=size, squeeze=False)
    keys = [k for k in group_keys(runs) if k != "model"]
    for ax, r, im in zip(axes.flat, picks, imgs):
        ax.imshow(im, interpolation="nearest" if im.shape[0] < 400 else "antialiased")
        ax.set_axis_off()
        label = config_label(r.to_dict(), ["model"] + keys)
        ax.set_title(f"{label}, seed {r['seed']}: val NLL {_num(r['val_nll'])}, test NLL {_num(r['test_nll'])}",
                     fontsize=10)
    fig.tight_layout()
    return fig


def save(fig, path) -> Optional[Path]:
    """Save a figure as PNG (dpi 110) and close it; None when there was nothing to draw."""
    if fig is None:
        return None
    plt, _ = _plt()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Helpers for the percent-format notebooks in analysis/


def notebook_params(sweep_dir=None, out=None, description: str = "") -> tuple[Path, Optional[Path]]:
    """(sweep dir, figure dir) of an analysis/ notebook. The arguments are the notebook's parameters
    cell (papermill may replace it); run as `python analysis/X.py`, --sweep-dir and --out override
    them. Without a sweep dir: the newest sweep under outputs/multirun."""
    if "ipykernel" not in sys.modules:  # a script: read the command line
        import argparse

        ap = argparse.ArgumentParser(description=description)
        ap.add_argument("--sweep-dir", default=sweep_dir, help="a sweep directory, a run, or outputs/ "
                                                               "(default: newest sweep under outputs/multirun)")
        ap.add_argument("--out", default=out, help="save the figures as PNGs here (default: show them)")
        args = ap.parse_args()
        sweep_dir, out = args.sweep_dir, args.out
    if sweep_dir is None:
        sweep_dir = newest_sweep()
        if sweep_dir is None:
            raise SystemExit("no sweep under outputs/multirun: pass --sweep-dir DIR")
        print(f"newest sweep: {sweep_dir}")
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    return Path(sweep_dir), (Path(out) if out is not None else None)


def show(fig, out: Optional[Path] = None, name: str = "figure.png") -> None:
    """Save the figure into out when given; else show it (inline in Jupyter; nothing under Agg)."""
    if fig is None:
        print(f"({name}: nothing to draw)")
        return
    if out is not None:
        print(f"saved {save(fig, Path(out) / name)}")
        return
    plt, _ = _plt()
    import matplotlib

    if matplotlib.get_backend().lower() == "agg":
        plt.close(fig)
    else:
        plt.show()
