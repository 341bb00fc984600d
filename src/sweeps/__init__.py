"""Sweep support: Optuna study storage, trial ↔ job bookkeeping, objectives, per-job CPU threads.

- jobs.py: what one job of a sweep needs (src/run.py imports it; no Optuna): its CPU share
  (`job_threads`, and `parallel_trials`, the resolver of the sweep files' hydra.sweeper.n_jobs), its
  objective(s) (`objective`, `check_objectives`), the keys it adds to results.json (`job_record`), and
  the check that a `sweep=` / `experiment=` name exists (`unknown_sweep`).
- storage.py: the study: its storage URL masked in every message (`masked`, `scrub`), creating and
  loading it with one-line errors (`ensure_study`, `load_existing_study`), trials.csv (`export_trials`).
- trials.py: trials and their jobs: `record_trial` (hydra.sweeper.custom_search_space) links each trial
  to its job dir; `close_stale` and `fail_interrupted` close trials a killed or stopped sweep left RUNNING.
- sweeper.py: what Hydra instantiates for an Optuna sweep: `OptunaSweeper` (hydra.sweeper._target_
  `hydra_plugins.csrae_sweeps.OptunaSweeper`) and `OptunaStudyCallback` (hydra.callbacks.optuna_study).
- cli.py (and __main__.py): the shell side, for studies shared between processes or machines:

      python -m src.sweeps create sweep=csrae_optuna [hydra.sweeper.storage=URL ...]
      python -m src.sweeps show   sweep=csrae_optuna
      python -m src.sweeps export sweep=csrae_optuna [--out trials.csv]
      python -m src.sweeps close-stale sweep=csrae_optuna --older-than 120 [--force]
      python -m src.sweeps dashboard sweep=csrae_optuna [--port 8080]   (pip install -e .[dashboard])

The sweep files are in sweeps/ (conf/sweep links there); the settings every Optuna sweep shares are in
conf/optuna_study.yaml. This file imports nothing at import time: every job imports src.sweeps.jobs, and with it this.
"""

# Sweep files written before the package split name `src.sweeps.OptunaStudyCallback` and
# `src.sweeps.record_trial`; they are looked up here only when Hydra asks for them.
_MOVED = {"OptunaStudyCallback": "src.sweeps.sweeper", "record_trial": "src.sweeps.trials"}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module 'src.sweeps' has no attribute {name!r}")
