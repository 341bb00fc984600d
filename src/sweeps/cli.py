"""`python -m src.sweeps create|show|export|close-stale|dashboard sweep=NAME [overrides] [options]`:
the Optuna study of a sweep file, from the shell (see src/sweeps/__init__.py).

Every error is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from omegaconf import DictConfig

from src.errors import first_line, print_error
from src.sweeps.artifacts import artifact_store
from src.sweeps.jobs import sweep_names, unknown_sweep
from src.sweeps.storage import (
    StudyStorageError,
    ensure_study,
    export_trials,
    load_existing_study,
    masked,
    open_storage,
    storage_error,
    storage_errors,
    study_summary,
    sweeper_settings,
)
from src.sweeps.trials import close_stale

DESCRIPTION = "Sweep support: Optuna study storage, trial ↔ job bookkeeping, objectives, per-job CPU threads."


def compose_sweep(overrides: list[str]) -> DictConfig:
    """The composed config (with its hydra node) of `python -m src.run -m <overrides>`."""
    from src.config import compose_config

    return compose_config(*overrides, hydra=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse's default adds the usage block)
        raise SystemExit(print_error(f"{message} (see python -m src.sweeps --help)"))


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m src.sweeps", description=DESCRIPTION)
    parser.add_argument("command", choices=["create", "show", "export", "close-stale", "dashboard"])
    parser.add_argument(
        "overrides",
        nargs="*",
        help="as for src.run, e.g. sweep=csrae_optuna hydra.sweeper.storage=postgresql://host/db",
    )
    parser.add_argument("--out", help="export: CSV path (default outputs/optuna/<study>_trials.csv)")
    parser.add_argument(
        "--older-than", type=float, default=60.0, help="close-stale: minutes a RUNNING trial must have run (default 60)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="close-stale: also close trials whose sweep process cannot be checked (started on "
        "another host, or before processes were recorded); make sure no sweep runs them",
    )
    parser.add_argument("--host", default="127.0.0.1", help="dashboard: address to serve on (default loopback only)")
    parser.add_argument("--port", type=int, default=8080, help="dashboard: port (default 8080)")
    args = parser.parse_args(argv)
    if not math.isfinite(args.older_than) or args.older_than < 0:
        parser.error(f"--older-than {args.older_than}: give minutes, 0 or more")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    bad = unknown_sweep(args.overrides)
    if bad:
        return print_error(bad)
    try:
        composed = compose_sweep(args.overrides)
        settings = sweeper_settings(composed)
    except Exception as e:  # noqa: BLE001 - every composition error is the user's input
        cause = f": {first_line(e.__cause__)}" if e.__cause__ is not None else ""
        return print_error(f"{first_line(e).rstrip('.')}{cause}")
    if settings is None:
        return print_error(
            "no Optuna storage/study_name in this config; pass sweep=NAME of an Optuna sweep "
            f"({', '.join(sweep_names())})"
        )
    storage, name, directions, objectives = settings
    try:
        return _command(args, storage, name, directions, objectives, composed.hydra)
    except StudyStorageError as e:
        return print_error(e)
    except storage_errors() as e:
        return print_error(storage_error(storage, e))


def _command(args, storage: str, name: str, directions: list[str], objectives: list[str], hydra_cfg) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each command prints its own one-line summary
    if args.command == "create":
        study = ensure_study(storage, name, directions, objectives)
        print(f"{study_summary(study)} ({', '.join(directions)}) in {masked(storage)}")
        return 0
    study = load_existing_study(storage, name)
    if args.command == "show":
        print(study_summary(study))
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        if done and len(directions) == 1:
            best = study.best_trial
            print(
                f"best trial {best.number}: {objectives[0] if objectives else 'value'} = {best.value:.4f}  "
                f"params {best.params}"
            )
        elif done:
            for t in study.best_trials:
                print(f"pareto trial {t.number}: values {t.values}  params {t.params}")
    elif args.command == "export":
        out = Path(args.out) if args.out else Path("outputs/optuna") / f"{name}_trials.csv"
        if out.is_dir():
            return print_error(f"--out {out} is a directory; give a file name, e.g. {out / 'trials.csv'}")
        print(export_trials(storage, name, out, objectives))
    elif args.command == "close-stale":
        closed = close_stale(study, args.older_than, objectives, force=args.force)
        print(f"stale RUNNING trials closed: COMPLETE from results.json {closed['complete']}, FAIL {closed['fail']}")
        if closed["alive"]:
            print(f"left RUNNING: trials {closed['alive']} (their sweep process is still running on this host)")
        if closed["unverified"]:
            print(
                f"warning: trials {closed['unverified']} left RUNNING: their sweep process cannot be checked "
                "(another host, or recorded before processes were); if no sweep is running them, rerun with "
                "--force",
                file=sys.stderr,
            )
    elif args.command == "dashboard":
        serve_dashboard(storage, study, args.host, args.port, artifact_store(hydra_cfg))
    return 0


def serve_dashboard(storage: str, study, host: str, port: int, artifacts=None) -> None:
    """Serve optuna-dashboard for the storage (a database or a journal file) until Ctrl-C; with the
    sweep's artifact store (hydra.sweeper.artifact_dir), its trials' images."""
    try:
        from optuna_dashboard import run_server
    except ImportError:
        raise SystemExit(print_error("optuna-dashboard is not installed: pip install -e '.[dashboard]'")) from None
    import optuna

    opened = optuna.storages.get_storage(open_storage(storage))
    study_id = opened.get_study_id_from_name(study.study_name)
    print(f"{study_summary(study)}: http://{host}:{port}/dashboard/studies/{study_id}  (Ctrl-C stops)", flush=True)
    run_server(opened, host=host, port=port, artifact_store=artifacts)
