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
# # An Optuna study
#
# What did the search find, and which parameters matter? Reads an Optuna sweep directory
# (`python -m src.run -m sweep=csrae_optuna`, see docs/SWEEPS.md). Trials are read from the job
# directories (results.json `trial` and `params`), so an interrupted sweep works too; the
# functions are those of `src.analysis`, as in `python -m src.report`.
#
# Run as a script: `python analysis/optuna_study.py --sweep-dir outputs/multirun/<sweep> [--out DIR]`.

# %% tags=["parameters"]
sweep_dir = None  # an Optuna sweep directory (or a directory holding several); None = newest sweep
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
sweep_dir, out = A.notebook_params(sweep_dir, out, "An Optuna study")

# %%
runs = A.load_runs(sweep_dir)
studies = A.optuna_studies(runs)
print(f"{len(runs)} runs, {len(studies)} Optuna stud{'y' if len(studies) == 1 else 'ies'}")
if not studies:
    print("no Optuna trials here (results.json has no trial number): is this an Optuna sweep?")

# %% [markdown]
# ## Trials, best trial, and how each parameter relates to the objective
# Spearman rank correlation over completed trials: a rough, model-free hint of which parameters
# matter (with few trials it is noise).

# %%
for i, study in enumerate(studies):
    t = study.trials
    print(
        f"\nstudy {study.name} in {study.sweep_dir}: {len(t)} trials, "
        f"{int(t['value'].notna().sum())} completed; objective {study.objective} ({study.direction})"
    )
    print(t.sort_values("value", ascending=study.direction == "minimize").head(10).to_string(index=False))
    best = study.best
    if best is not None:
        print(
            f"best trial {int(best['number'])}: {study.objective} = {best['value']:.4f}, "
            + ", ".join(f"{p}={best[p]}" for p in study.params)
        )
        done = t[t["value"].notna()]
        if len(done) >= 3:
            rho = {
                p: done[p].corr(done["value"], method="spearman")
                for p in study.params
                if pd.api.types.is_numeric_dtype(done[p])
            }
            print("Spearman correlation with the objective:", {p: round(float(r), 2) for p, r in rho.items()})
    tag = f"_{i + 1}" if len(studies) > 1 else ""
    A.show(A.plot_optuna_history(study), out, f"optuna_history{tag}.png")
    A.show(A.plot_optuna_params(study), out, f"optuna_params{tag}.png")

# %% [markdown]
# ## The runs behind the trials (test metrics the search did not optimise)

# %%
cols = ["run", "status", "trial", "model", "K", "reg_weight", "latent_dim", "lr", "val_nll", "test_nll", "acc", "nmi"]
print(runs[[c for c in cols if c in runs]].sort_values("val_nll").round(4).to_string(index=False))
