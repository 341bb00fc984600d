"""Finding run directories and reading them into one table: a row per run, broken runs included
with a status that says why."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from src.analysis.vocabulary import COMPLETED, INVALID, NOT_GROUPING, STATUS_ORDER
from src.contract import CONFIG_COLUMNS, FLOAT_KEYS, INT_KEYS, RESULT_KEYS


class NoRunsError(Exception):
    """The directory holds no run (no results.json or .hydra/config.yaml anywhere below it)."""


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


def newest_sweep(outputs="outputs") -> Path | None:
    """The sweep directory under outputs/multirun holding the most recently written run (None if none)."""
    base = Path(outputs) / "multirun"
    runs = find_run_dirs(base) if base.is_dir() else []
    if not runs:
        return None
    newest = max(
        runs, key=lambda d: (d / "results.json").stat().st_mtime if (d / "results.json").exists() else d.stat().st_mtime
    )
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


def read_yaml(path: Path) -> dict | None:
    """The parsed YAML file; None when it cannot be read or parsed."""
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None


def load_run(run_dir: Path, root: Path | None = None) -> tuple[dict, dict]:
    """One run: (row, flattened .hydra config). Never raises for a broken run: the status says why."""
    run_dir = Path(run_dir)
    rel = os.path.relpath(run_dir, root) if root is not None else run_dir.name
    row: dict = {"run": "." if rel == "." else rel}
    raw_cfg = read_yaml(run_dir / ".hydra" / "config.yaml")
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
        results = {
            "status": "no results.json",
            "error": "no results.json: the run never started (or was killed before writing it)",
        }
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
        elif key in INT_KEYS and (isinstance(v, float) and not v.is_integer() or not -(2**63) <= v < 2**63):
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
    extra = [
        c
        for c in cfg_df.columns
        if c not in covered
        and not c.startswith(("hydra.", "sweep."))
        and cfg_df[c].astype(str).nunique(dropna=False) > 1
    ]
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
