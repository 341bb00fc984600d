"""Seaborn figures of the runs and studies. Each plot_* returns a matplotlib Figure (None when there is
nothing to draw); `save` writes it as a PNG."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from src.analysis.grouping import (
    config_label,
    group_keys,
    model_settings,
    own_weights_label,
    select_rows,
    setting_label,
)
from src.analysis.loading import completed
from src.analysis.stats import best_run, summarize
from src.analysis.studies import OptunaStudy, load_curves
from src.analysis.vocabulary import metric_info
from src.formatting import number
from src.plotting import pyplot

PALETTE = "colorblind"


def plotting():
    """matplotlib.pyplot (src.plotting: the Agg backend unless one was chosen) and seaborn with the
    figures' theme."""
    plt = pyplot()  # before seaborn, which imports pyplot
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", palette=PALETTE)
    return plt, sns


def _model_colors(models: Sequence[str]) -> dict:
    _, sns = plotting()
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
    several_k = any(select_rows(summary, fk, v)["K"].nunique() > 1 for v in vals)
    return (fk, vals) if len(vals) <= MAX_PANELS and several_k else ([], [()])


def plot_metric_vs_k(
    runs: pd.DataFrame, metrics: Sequence[str] = ("test_nll",), summary: pd.DataFrame | None = None, min_k: int = 0
):
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
    plt, _ = plotting()
    keys = group_keys(sub)
    fk, facets = _panels(summary, keys)
    means = len(fk) > 0 or len([k for k in keys if k not in ("model", "K")]) == 0
    colors = _model_colors(ok["model"].dropna().unique())
    rows, cols = (1, len(metrics)) if len(facets) == 1 else (len(metrics), len(facets))  # one column: side by side
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols + 1.0, 3.8 * rows), squeeze=False)
    axes = axes.reshape(len(metrics), len(facets))
    ks = sorted(ok["K"].dropna().unique())
    for i, metric in enumerate(metrics):
        m = metric_info(metric)
        for j, fv in enumerate(facets):
            ax = axes[i][j]
            s, pts = select_rows(summary, fk, fv), select_rows(ok, fk, fv)
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
                ax.scatter(
                    p["K"].astype(float),
                    p[metric].astype(float),
                    color=c,
                    s=16,
                    alpha=0.7,
                    edgecolor="white",
                    linewidth=0.5,
                    zorder=3,
                    label=None if means else f"{model}: runs",
                )
            if len(ks) > 1 and min(ks) > 0 and max(ks) / min(ks) >= 20:
                ax.set_xscale("log")
            if len(ks) <= 12:
                ax.set_xticks([float(k) for k in ks], [str(int(k)) for k in ks])
            ax.set_xlabel("K (mixture components)")
            unit = f" ({m.unit})" if m.unit else ""
            ax.set_ylabel(f"{m.label}{unit}  {'↑' if m.higher_is_better else '↓'} better")
            if metric in ("acc", "nmi", "ari"):
                ax.set_ylim(-0.02, 1.02)
            if fk:
                ax.set_title(config_label(dict(zip(fk, fv)), fk))
            if i == 0 and j == 0:
                ax.legend(loc="best", fontsize=8, frameon=True)
    what = (
        "mean over seeds, band or bar = 95% t-interval, dots = single runs"
        if means
        else "single runs (other settings vary between them)"
    )
    fig.suptitle(" and ".join(metric_info(mt).label for mt in metrics) + f" vs K: {what}", fontsize=11)
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
    plt, _ = plotting()
    models = sorted(ok["model"].dropna().unique(), key=str)
    colors = _model_colors(models)
    fig, axes = plt.subplots(1, len(models), figsize=(5.2 * len(models) + 0.6, 4.0), squeeze=False)
    for ax, model in zip(axes[0], models):
        g = ok[ok["model"] == model]
        ax.scatter(
            g["test_reg"].astype(float),
            g["test_recon"].astype(float),
            color=colors[model],
            s=24,
            edgecolor="white",
            linewidth=0.5,
            zorder=3,
        )
        if "target_recon" in g:
            for _, r in g[g["target_recon"].notna()].iterrows():
                ax.annotate(
                    f"κ={number(r['target_recon'])}",
                    (float(r["test_reg"]), float(r["test_recon"])),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
            for kappa in g["target_recon"].dropna().unique():
                ax.axhline(float(kappa), color=colors[model], lw=0.6, ls=":", alpha=0.6)
        ax.set_xlabel(("KL" if model == "vae" else "D_CS" if model == "csrae" else "regulariser") + " (nats, test)")
        ax.set_ylabel("reconstruction −log p(x|z) (nats, test)")
        ax.set_title(str(model))
    fig.suptitle("Rate-distortion: reconstruction vs regulariser, one point per run", fontsize=11)
    fig.tight_layout()
    return fig


def plot_clustering_vs_k(runs: pd.DataFrame, summary: pd.DataFrame | None = None):
    """ACC and NMI against K, for K > 1 (one component has nothing to cluster)."""
    return plot_metric_vs_k(runs, ("acc", "nmi"), summary, min_k=1)


def plot_val_curves(runs: pd.DataFrame, curves: pd.DataFrame | None = None):
    """Validation reconstruction and validation loss per epoch, one line per model (mean over runs,
    band = ±1 sd), one column per K (and other varying settings)."""
    curves = load_curves(runs) if curves is None else curves
    if curves.empty:
        return None
    plt, sns = plotting()
    fk = [k for k in group_keys(runs) if k != "model"]
    facets = list(model_settings(curves, fk, runs))  # models side by side, each at its own weight
    pooled = len(facets) > 2 * MAX_PANELS  # a search: one panel, every run of a model pooled
    if pooled:
        fk, facets = [], [({}, curves)]
    colors = _model_colors(curves["model"].dropna().unique())
    rows = [("val_recon", "validation reconstruction (nats)"), ("val_loss", "validation loss (own objective)")]
    rows = [r for r in rows if r[0] in curves]
    fig, axes = plt.subplots(
        len(rows), len(facets), figsize=(4.2 * len(facets) + 1.2, 3.4 * len(rows)), squeeze=False, sharex=True
    )
    for j, (setting, c) in enumerate(facets):
        for i, (col, label) in enumerate(rows):
            ax = axes[i][j]
            sns.lineplot(
                data=c, x="epoch", y=col, hue="model", palette=colors, errorbar="sd", ax=ax, legend=(i == 0 and j == 0)
            )
            ax.set_ylabel(label if j == 0 else "")
            ax.xaxis.get_major_locator().set_params(integer=True)
            if i == 0 and fk:
                own = f"\n{own_weights_label(c)}" if "reg_weight" in fk and pd.isna(setting["reg_weight"]) else ""
                ax.set_title(setting_label(setting, fk) + own)
            lo, hi = c[col].quantile(0.02), c[col].quantile(0.98)
            if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
                pad = 0.15 * (hi - lo)
                ax.set_ylim(lo - pad, hi + pad)
    over = "all runs of a model, whose settings differ" if pooled else "seeds"
    fig.suptitle(
        f"Validation curves per epoch (mean over {over}, band = ±1 sd).\nLoss levels differ by objective "
        "(KL vs CS): compare models on reconstruction",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def plot_optuna_history(study: OptunaStudy):
    """Objective per trial, the best so far as a step line, failed trials as grey crosses and pruned
    ones as open circles, both at the bottom (they have no objective)."""
    plt, _ = plotting()
    t = study.trials
    done = t[t["value"].notna()]
    pruned = t[t["value"].isna() & (t["state"] == "PRUNED")]
    failed = t[t["value"].isna() & (t["state"] != "PRUNED")]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    if not done.empty:
        ax.scatter(done["number"], done["value"], s=28, label="trial", zorder=3)
        best = done["value"].cummin() if study.direction == "minimize" else done["value"].cummax()
        ax.step(done["number"], best, where="post", color="C3", lw=2, label="best so far")
    # trials with no final value are drawn at the bottom, apart from the ones that have one
    bottom = done["value"].min() if not done.empty else 0.0
    for kind, trials, style in (
        ("failed", failed, dict(marker="x", color="grey")),
        ("pruned", pruned, dict(marker="o", facecolors="none", edgecolors="C1")),
    ):
        if not trials.empty:
            label = f"{kind} ({len(trials)}, drawn at the bottom)"
            ax.scatter(trials["number"], [bottom] * len(trials), s=40, label=label, zorder=3, **style)
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
    plt, _ = plotting()
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
        ax.scatter(
            [best[p]] if pd.api.types.is_numeric_dtype(x) else [str(best[p])],
            [best["value"]],
            marker="*",
            s=220,
            color="C3",
            zorder=4,
            label="best",
        )
        if p in study.log_params:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel(p)
    for ax in axes[:, 0]:
        ax.set_ylabel(study.objective)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Objective vs each searched parameter (colour = trial number, dark = early; star = best)", fontsize=11)
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
    plt, _ = plotting()
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
        nll = f"val NLL {number(r['val_nll'], 2)}, test NLL {number(r['test_nll'], 2)}"
        ax.set_title(f"{label}, seed {r['seed']}: {nll}", fontsize=10)
    fig.tight_layout()
    return fig


def save(fig, path) -> Path | None:
    """Save a figure as PNG (dpi 110) and close it; None when there was nothing to draw."""
    if fig is None:
        return None
    plt, _ = plotting()
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
