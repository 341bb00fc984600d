"""This project's Hydra plugin: the Optuna sweeper (hydra/sweeper=csrae_optuna). Hydra finds it by
scanning the hydra_plugins namespace package; the sweep itself is in src/sweeps/sweeper.py."""
