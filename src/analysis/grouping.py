"""Which configuration columns split runs into groups (seeds are the replicates), and how a group is named."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from src.analysis.loading import completed
from src.contract import CONFIG_COLUMNS
from src.formatting import number


def candidate_keys(runs: pd.DataFrame) -> list[str]:
    """Configuration columns (without seed) that can define a group."""
    keys = [c for c in CONFIG_COLUMNS if c != "seed" and c in runs]
    return keys + [c for c in runs.columns if c.startswith("cfg.")]


def varying_keys(runs: pd.DataFrame, keys: Iterable[str] | None = None) -> list[str]:
    """The keys whose value differs between the given runs."""
    keys = candidate_keys(runs) if keys is None else list(keys)
    return [k for k in keys if k in runs and runs[k].astype(str).nunique(dropna=False) > 1]


def group_keys(runs: pd.DataFrame) -> list[str]:
    """Grouping keys for seeds-as-replicates: the configuration columns that vary among completed runs
    (always including model and K when present, so labels stay readable), less the entries of the model
    and prior config groups that the choice of model and prior already fixes (a gmm prior's init and
    train beside the standard prior's)."""
    ok = completed(runs)
    rows = ok if len(ok) else runs
    keys = [k for k in varying_keys(rows) if not _fixed_by_model_and_prior(rows, k)]
    for k in ("K", "model"):
        if k in runs and k not in keys:
            keys.insert(0, k)
    order = candidate_keys(runs)
    return sorted(keys, key=order.index)


def model_settings(data: pd.DataFrame, keys: Sequence[str], design: pd.DataFrame):
    """The settings in which models are set side by side (paired comparisons, panels of curves), as
    (values, rows of data): each combination of keys (grouping keys other than the model).

    reg_weight is each model's own knob (β of the VAE, λ of CSRAE): when every model of a setting was run
    at a single weight there (a tuned pair), the models meet at their own weights and the setting's
    reg_weight is NaN unless all share it; otherwise (a grid) they meet only at equal weights. Which of
    the two is decided on design (every run, whatever finished), so a grid with a failed run never turns
    into cross-weight comparisons."""
    keys = list(keys)
    if "reg_weight" not in keys:
        yield from key_groups(data, keys)
        return
    loose = [k for k in keys if k != "reg_weight"]
    for values, g in key_groups(data, loose):
        planned = select_rows(design, loose, tuple(values.values()))
        if planned.groupby("model")["reg_weight"].nunique(dropna=False).max() <= 1:
            weights = g["reg_weight"].unique()
            yield {**values, "reg_weight": weights[0] if len(weights) == 1 else np.nan}, g
        else:
            for w, gw in g.groupby("reg_weight", dropna=False, sort=True):
                yield {**values, "reg_weight": w}, gw


def own_weights_label(rows: pd.DataFrame) -> str:
    """'csrae λ=2.63, vae β=1': each model's weight among rows."""
    pairs = rows[["model", "reg_weight"]].drop_duplicates().sort_values("model").itertuples(index=False)
    return ", ".join(f"{m} {short_key('reg_weight', m)}={number(w)}" for m, w in pairs)


def key_groups(data: pd.DataFrame, keys: Sequence[str]):
    """(values, rows) of each combination of keys among data's rows (one group of all when no keys)."""
    keys = list(keys)
    if not keys:
        yield {}, data
        return
    for c, g in data.groupby(keys, dropna=False, sort=True):
        yield dict(zip(keys, c if isinstance(c, tuple) else (c,))), g


def _fixed_by_model_and_prior(runs: pd.DataFrame, key: str) -> bool:
    """Whether key is a cfg.model.* or cfg.prior.* entry with one value per (model, prior) among runs."""
    by = [k for k in ("model", "prior") if k in runs]
    if not key.startswith(("cfg.model.", "cfg.prior.")) or not by:
        return False
    values = runs[[*by, key]].astype(str)
    return bool((values.groupby(by)[key].nunique() == 1).all())


def select_rows(df: pd.DataFrame, keys: Sequence[str], values: tuple) -> pd.DataFrame:
    """The rows whose keys have these values (a missing value matches a missing one)."""
    mask = pd.Series(True, index=df.index)
    for k, v in zip(keys, values):
        mask &= df[k].isna() if pd.isna(v) else (df[k] == v)
    return df[mask]


def value_order(v):
    """Sort key for the values of one column: numbers by value first, then anything else as text."""
    return (0, float(v), "") if isinstance(v, (int, float, np.integer, np.floating)) else (1, 0.0, str(v))


def short_key(key: str, model: str | None = None) -> str:
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
            parts.append(number(v))
        else:
            parts.append(f"{short_key(k, model)}={number(v)}")
    return ", ".join(parts) if parts else "all runs"


def side_labels(row: dict) -> dict:
    """The names of a paired comparison's two sides, {model: label}: the model alone, or with its own
    weight ('csrae (λ=2.63)') when the two sides were run at different weights."""
    wa, wb = row.get("weight_a"), row.get("weight_b")
    if wa is None or wb is None or pd.isna(wa) or pd.isna(wb) or wa == wb:
        return {row["a"]: str(row["a"]), row["b"]: str(row["b"])}
    return {m: f"{m} ({short_key('reg_weight', m)}={number(w)})" for m, w in ((row["a"], wa), (row["b"], wb))}


def setting_label(row: dict, keys: Sequence[str]) -> str:
    """The setting a comparison row was made in: its keys except the model (and the weight when the
    sides differ in it)."""
    return config_label(row, [k for k in keys if k != "model" and not (k == "reg_weight" and pd.isna(row.get(k)))])
