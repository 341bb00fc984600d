"""What one job of a sweep needs: its CPU share, its objective(s), the record that joins it to its
trial, and the check that a `sweep=` / `experiment=` name exists.

Light on purpose (omegaconf, the standard library and Hydra's callback base; Hydra's override parser
when used): every job imports this module, and none of it needs Optuna.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from src.resolvers import cpu_count, option_names, workers

TRIALS_SUBDIR = ".optuna"  # <sweep dir>/.optuna/<job num>.json: the trial each job runs


@dataclass(frozen=True)
class PrunedJob:
    """What a job returns to the Optuna sweeper when its trial's pruner stopped it: the epoch it
    stopped after and the last interim value it reported. The sweeper records the trial PRUNED."""

    epoch: int
    value: float


class ObjectiveError(ValueError):
    """The run finished but cannot give the sweep the objective it asked for (one line for the user)."""


# --- CPU share per job --------------------------------------------------------------------------


def job_threads(trainer_threads: int, hydra_cfg: Any) -> int | None:
    """torch threads for one job when trainer.threads=0 (auto) and the launcher runs jobs side by side.

    joblib with N workers: each job gets cpus // N threads (2 workers on 2 cores: 1 thread each).
    submitit with cpus_per_task set: that many. Otherwise None (keep torch's default).
    """
    if trainer_threads:
        return None
    launcher = OmegaConf.select(hydra_cfg, "launcher") if hydra_cfg is not None else None
    if launcher is None:
        return None
    target = str(launcher.get("_target_", ""))
    if "JoblibLauncher" in target:
        return max(1, cpu_count() // workers(launcher.get("n_jobs", -1)))
    if "submitit" in target and launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    return None


# --- objectives ---------------------------------------------------------------------------------


def objective_names(cfg: Any) -> list[str]:
    names = OmegaConf.select(cfg, "sweep.objectives", default=None) if OmegaConf.is_config(cfg) else None
    if names is None:
        return []
    if isinstance(names, str):
        return [names]
    return [str(n) for n in names]


def check_objectives(cfg: Any, known: Iterable[str]) -> None:
    """Fail before training when sweep.objectives names a test-set metric (a sweep selects on validation
    only) or a key results.json does not have."""
    from src.config import ConfigError
    from src.contract import TEST_KEYS

    names = objective_names(cfg)
    on_test = [n for n in names if n in TEST_KEYS]
    if on_test:
        raise ConfigError(
            f"sweep.objectives: {', '.join(on_test)} {'is' if len(on_test) == 1 else 'are'} measured on the test "
            "set; a sweep selects on validation only (val_nll, val_acc)"
        )
    unknown = [n for n in names if n not in set(known)]
    if unknown:
        raise ConfigError(f"sweep.objectives: {unknown} are not results.json keys (e.g. val_nll, val_acc)")


class ObjectivesCheck(Callback):
    """hydra.callbacks.objectives (conf/config.yaml): every multirun checks sweep.objectives once, before
    its first job (a grid too: its jobs would each fail on the same objective)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        from src.config import ConfigError
        from src.contract import RESULT_KEYS

        try:
            check_objectives(config, RESULT_KEYS)
        except ConfigError as e:  # Hydra turns a callback's Exception into a warning; SystemExit stops it
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None


def objective(cfg: Any, run_dir: Path, val_nll: float) -> float | list[float]:
    """What the task returns to the sweeper.

    Default (no sweep.objectives, or [val_nll]): the validation NLL as a float. A sweep that lists
    several results.json keys (multi-objective, e.g. [val_nll, val_acc]) gets a list of floats in that
    order; it must give hydra.sweeper.direction in the same order. A missing or non-finite value
    raises ObjectiveError: the Optuna sweeper then records the trial as failed, with the reason.
    """
    names = objective_names(cfg)
    if not names or names == ["val_nll"]:
        return val_nll
    results = json.loads((Path(run_dir) / "results.json").read_text())
    values = []
    for name in names:
        v = results.get(name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            hint = " (clustering metrics need prior.K > 1 and eval.clustering=true)" if "acc" in name else ""
            raise ObjectiveError(f"objective {name!r} is {v!r} in {run_dir}/results.json{hint}")
        values.append(float(v))
    return values[0] if len(values) == 1 else values


# --- the job's record ---------------------------------------------------------------------------


def _override_params(overrides: Iterable[str]) -> dict:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = {}
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.key_or_group == "sweep":
            continue
        try:
            params[o.key_or_group] = o.value()
        except Exception:  # noqa: BLE001 - a value the parser cannot type: keep the text
            params[o.key_or_group] = o.get_value_element_as_str()
    return params


def job_record(cfg: Any, hydra_cfg: Any, overrides: list[str]) -> dict:
    """Keys a multirun job adds to results.json so runs and trials join.

    sweep: the sweep file's name (null for a command-line grid); study / trial: the Optuna study and
    trial number (null without Optuna); params: the trial's sampled parameters for Optuna, else the
    job's overrides as a key -> value dict. The trial comes from <sweep dir>/.optuna/<job num>.json,
    which src.sweeps.trials.record_trial writes before the job starts.
    """
    out = {
        "sweep": OmegaConf.select(cfg, "sweep.name", default=None),
        "study": None,
        "trial": None,
        "params": _override_params(overrides),
    }
    sweep_dir = OmegaConf.select(hydra_cfg, "sweep.dir", default=None)
    job_num = OmegaConf.select(hydra_cfg, "job.num", default=None)
    if sweep_dir is not None and job_num is not None:
        path = Path(str(sweep_dir)) / TRIALS_SUBDIR / f"{job_num}.json"
        if path.exists():
            out.update(json.loads(path.read_text()))
    return out


# --- sweep and experiment names -----------------------------------------------------------------


def sweep_names() -> list[str]:
    """The named sweeps: the files in sweeps/ (conf/sweep links there)."""
    return option_names("sweep")


# The config's optional groups: Hydra skips an unknown option of these silently, so a misspelt name
# would run the default configuration instead (one digits job instead of the sweep or the protocol).
OPTIONAL_GROUPS = {
    "sweep": "the files in sweeps/",
    "experiment": "the files in conf/experiment/",
    "debug": "the files in conf/debug/",
}


def unknown_sweep(overrides: Iterable[str]) -> str | None:
    """The error for a `sweep=NAME` or `experiment=NAME` override naming no file of its group (None when
    all are known). Left to Hydra: overrides it cannot parse, and commands that add config directories
    (--config-dir, hydra.searchpath).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = list(overrides)
    if any(o.startswith(("-cd", "--config-dir")) or "searchpath" in o for o in overrides):
        return None
    for o in overrides:
        group = o.split("=", 1)[0].lstrip("+~")
        if group not in OPTIONAL_GROUPS or "=" not in o or o.startswith("~"):
            continue
        try:
            parsed = OverridesParser.create().parse_override(o)
            values = list(parsed.sweep_string_iterator()) if parsed.is_sweep_override() else [parsed.value()]
        except Exception:  # noqa: BLE001 - Hydra reports its own syntax errors
            continue
        names = option_names(group)
        values = [x for v in values for x in (v if isinstance(v, list) else [v])]  # experiment=[a,b]
        bad = [str(v) for v in values if v is not None and str(v) not in names]
        if bad:
            return f"unknown {group} {', '.join(bad)}; choose one of {', '.join(names)} ({OPTIONAL_GROUPS[group]})"
    return None
