"""Per-epoch curves and Optuna studies, read from the job directories (optuna itself is imported only
to compute parameter importances)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from src.analysis.grouping import candidate_keys
from src.analysis.loading import completed, read_yaml
from src.analysis.vocabulary import COMPLETED


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
    return read_yaml(d / "config.yaml") or {}, (read_yaml(d / "hydra.yaml") or {}).get("hydra") or {}


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
    name: str | None
    trials: pd.DataFrame  # number, value, state, run, status, and one column per parameter
    params: list[str]
    objective: str  # the results.json key the trials returned (first objective)
    direction: str  # minimize | maximize
    log_params: set  # parameters searched on a log scale
    space: dict = field(default_factory=dict)  # hydra.sweeper.params: parameter -> search-space text

    @property
    def best(self) -> pd.Series | None:
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
    state COMPLETE, PRUNED (stopped by the study's pruner: no value, never compared) or FAIL;
    direction and log-scaled parameters from the sweeper config in .hydra/."""
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
        rows.append(
            {
                "number": int(r["trial"]),
                "value": value,
                "state": "COMPLETE" if ok else ("PRUNED" if r["status"] == "pruned" else "FAIL"),
                "status": r["status"],
                "run": r["run"],
                **_params_of(r),
            }
        )
    trials = pd.DataFrame(rows).sort_values("number", kind="stable").reset_index(drop=True)
    params = [c for c in trials.columns if c not in ("number", "value", "state", "status", "run")]
    return OptunaStudy(
        Path(first["run_dir"]).parent,
        first.get("study"),
        trials,
        params,
        objective,
        direction,
        {k for k, v in space.items() if "log" in str(v)},
        dict(space),
    )


def param_importances(study: OptunaStudy, seed: int = 0) -> pd.DataFrame:
    """Each searched parameter's importance for the study's (first) objective over its completed trials.

    Optuna's default evaluator (PED-ANOVA in Optuna 5; seeded where it samples) on an in-memory copy of
    the trials, with the search space parsed as the sweep parsed it (src.sweeps.space). Columns:
    parameter, importance (summing to 1), sorted. Empty when fewer than two completed trials have every
    searched parameter.
    """
    import optuna
    from optuna.distributions import CategoricalDistribution, IntDistribution
    from optuna.importance import get_param_importances

    from src.sweeps.space import search_space

    searched, _, _ = search_space(study.space)
    dists = {k: d for k, d in searched.items() if k in study.params}
    empty = pd.DataFrame(columns=["parameter", "importance"])
    done = study.trials[study.trials["state"].eq("COMPLETE") & study.trials["value"].notna()].dropna(subset=list(dists))
    if not dists or len(done) < 2:
        return empty

    def cast(d, v):
        if isinstance(d, IntDistribution):
            return int(v)
        return str(v) if isinstance(d, CategoricalDistribution) else float(v)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    copy = optuna.create_study(direction=study.direction)
    for _, t in done.iterrows():
        copy.add_trial(
            optuna.trial.create_trial(
                params={k: cast(d, t[k]) for k, d in dists.items()}, distributions=dists, value=float(t["value"])
            )
        )
    imp = get_param_importances(copy)
    return pd.DataFrame({"parameter": list(imp), "importance": [float(v) for v in imp.values()]})
