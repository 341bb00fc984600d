# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # VAE vs CSRAE on the same seeds
#
# Which objective gives the better model: the VAE's KL term or CSRAE's Cauchy–Schwarz divergence?
# Reads a sweep (e.g. `python -m src.run -m model=vae,csrae prior.K=10 trainer.seed=0,1,2`) and
# compares the two models setting by setting, paired over the seeds both have. Everything here is
# computed by `src.analysis`, the same code as `python -m src.report`.
#
# Run as a script: `python analysis/vae_vs_csrae.py --sweep-dir outputs/multirun/<sweep> [--out DIR]`;
# as a notebook: `jupytext --to notebook analysis/vae_vs_csrae.py` (papermill can set the parameters).

# %% tags=["parameters"]
sweep_dir = None  # a sweep directory; None = the newest under outputs/multirun
out = None  # a directory to save the figures in; None = show them

# %%
import sys
from pathlib import Path

try:
    from src import analysis as A
except ModuleNotFoundError:  # not pip-installed: run from the repository root or analysis/
    sys.path.insert(0, str(Path.cwd().parent if Path.cwd().name == "analysis" else Path.cwd()))
    from src import analysis as A
import pandas as pd

pd.set_option("display.width", 200)
pd.set_option("display.max_columns", 30)
sweep_dir, out = A.notebook_params(sweep_dir, out, "VAE vs CSRAE on the same seeds")

# %% [markdown]
# ## The runs
# Failed, interrupted and unfinished runs stay in the table and are left out of every statistic.

# %%
runs = A.load_runs(sweep_dir)
print(A.status_counts(runs))
bad = A.excluded(runs)
if len(bad):
    print("excluded from the statistics:")
    print(bad[["run", "status", "model", "K", "seed", "error"]].to_string(index=False))
keys = A.group_keys(runs)
print("configurations differ in:", keys)

# %% [markdown]
# ## Mean over seeds with 95% t-intervals

# %%
summary = A.summarize(runs)
cols = keys + ["seeds"] + [f"{m}_{s}" for m in ("test_nll", "acc", "nmi") for s in ("mean", "ci95")]
print(summary[[c for c in cols if c in summary]].round(3).to_string(index=False))

# %% [markdown]
# ## Paired comparisons: model a − model b on common seeds
# Paired t-test per setting, Holm-adjusted over the settings of each metric.

# %%
comparisons = {m: A.paired_comparisons(runs, m) for m in A.VERDICT_METRICS}
for metric, table in comparisons.items():
    print(f"\n{metric}:")
    if table.empty:
        print("  no pair of models shares a seed")
        continue
    print(
        table[
            [k for k in keys if k != "model"]
            + ["a", "b", "weight_a", "weight_b", "n", "diff", "diff_ci95", "p", "p_holm", "better", "significant"]
        ]
        .round(4)
        .to_string(index=False)
    )

# %% [markdown]
# ## The verdict (the same text as the report)

# %%
print(A.verdict_markdown(A.verdict(runs, summary, comparisons)))

# %% [markdown]
# ## Figures

# %%
A.show(A.plot_metric_vs_k(runs, ("test_nll",), summary), out, "nll_vs_k.png")
A.show(A.plot_val_curves(runs), out, "val_curves.png")
A.show(A.plot_best_images(runs, "samples.png"), out, "samples_best.png")
A.show(A.plot_best_images(runs, "latent_scatter.png"), out, "latent_best.png")
