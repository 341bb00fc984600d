"""Sweep support: Optuna study storage, trial ↔ job bookkeeping, pruning, objectives, per-job CPU threads.

- jobs.py: what one job of a sweep needs (src/run.py imports it; no Optuna): its CPU share
  (`job_threads`; the sweep files' hydra.sweeper.n_jobs is src.resolvers.parallel_trials), its
  objective(s) (`objective`, `check_objectives`), the keys it adds to results.json (`job_record`),
  what a pruned job returns (`PrunedJob`), and the check that a `sweep=` / `experiment=` name exists.
- pruning.py: a trial's job reports interim validation NLLs to its trial and asks the study's pruner
  (`TrialReporter`); the `pruner` config group (`make_pruner`).
- space.py: the search space of hydra.sweeper.params, parsed as the Optuna plugin parses it.
- storage.py: the study: its storage (a database URL, or a journal file path: `open_storage`; old
  schemas upgraded), the URL masked in every message (`masked`, `scrub`), creating and loading it with
  one-line errors (`ensure_study`, `load_existing_study`), trials.csv (`export_trials`).
- trials.py: trials and their jobs: `record_trial` links each trial to its job dir; `close_stale` and
  `fail_interrupted` close trials a killed or stopped sweep left RUNNING.
- sweeper.py: the sweep loop run by the Hydra plugin hydra_plugins/csrae_sweeps (hydra/sweeper=csrae_optuna).
- slurm.py: batches run as SLURM job arrays (submitit): jobs that ended without a result
  (`batch_results`), and a batch `scancel` cancelled as a whole, which stops the sweep (`cancelled_batch`).
- cli.py (and __main__.py): the shell side, for studies shared between processes or machines:

      python -m src.sweeps create sweep=csrae_optuna [hydra.sweeper.storage=URL|PATH.log ...]
      python -m src.sweeps show   sweep=csrae_optuna
      python -m src.sweeps export sweep=csrae_optuna [--out trials.csv]
      python -m src.sweeps close-stale sweep=csrae_optuna --older-than 120 [--force]
      python -m src.sweeps dashboard sweep=csrae_optuna [--port 8080]   (pip install -e .[dashboard])

The sweep files are in sweeps/ (conf/sweep links there); the settings every Optuna sweep shares are in
conf/optuna_study.yaml. This file imports nothing: every job imports src.sweeps.jobs, and with it this.
"""
