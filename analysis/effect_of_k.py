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
# # The effect of K, the number of mixture components
#
# For each model, how do test NLL and clustering change with K? Reads a sweep over `prior.K`
# (e.g. `python -m src.run -m model=vae,csrae prior.K=1,5,10 trainer.seed=0,1,2`). All numbers come
# from `src.analysis` (the code behind `python -m src.report`).
#
# Run as a script: `python analysis/effect_of_k.py --sweep-dir outputs/multirun/<sweep> [--out DIR]`.

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
sweep_dir, out = A.notebook_params(sweep_dir, out, "The effect of K")

# %%
runs = A.load_runs(sweep_dir)
print(A.status_counts(runs), "- only completed runs enter the statistics")
ok = A.completed(runs)
print("K values per model:", {m: sorted(map(int, g["K"].dropna().unique())) for m, g in ok.groupby("model")})

# %% [markdown]
# ## Test NLL, clustering and components used, per model and K (mean ± 95% t-interval half-width)

# %%
summary = A.summarize(runs)
keys = A.group_keys(runs)
cols = keys + ["seeds"] + [f"{m}_{s}" for m in ("test_nll", "acc", "nmi", "n_clusters_used") for s in ("mean", "ci95")]
print(summary[[c for c in cols if c in summary]].round(3).to_string(index=False))

# %% [markdown]
# ## Does K matter? Every pair of K values within a model, paired over common seeds
# (paired t-test, Holm-adjusted over the pairs of each metric; `diff` = metric at K=a minus at K=b)

# %%
for metric in ("test_nll", "nmi"):
    table = A.paired_comparisons(runs, metric, between="K")
    print(f"\n{metric}:")
    if table.empty:
        print("  fewer than two values of K share a seed")
        continue
    print(
        table[
            [k for k in keys if k != "K"] + ["a", "b", "n", "diff", "diff_ci95", "p", "p_holm", "better", "significant"]
        ]
        .round(4)
        .to_string(index=False)
    )

# %% [markdown]
# ## Best K per model (by mean test NLL; chosen on test, so read it as descriptive)

# %%
best = A.best_configs(summary, "test_nll").groupby("model", sort=True).head(1)
print(best[keys + ["test_nll_mean", "test_nll_ci95", "n_runs"]].round(3).to_string(index=False))

# %%
A.show(A.plot_metric_vs_k(runs, ("test_nll",), summary), out, "nll_vs_k.png")
A.show(A.plot_clustering_vs_k(runs, summary), out, "clustering_vs_k.png")
A.show(A.plot_val_curves(runs), out, "val_curves.png")
