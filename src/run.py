"""Hydra entry point: `python -m src.run model=csrae prior.K=10` (add -m for sweeps).

Thin on purpose: compose the config, hand it to the pipeline, return the objective for sweepers
(the validation NLL; a sweep's `sweep.objectives` may list other results.json keys, see
src/sweeps/jobs.py). Known user errors print one line and exit non-zero in a single run; in a multirun
they are raised so the sweeper records the job as failed and goes on.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from src import interrupts, rundir
from src.config import compose_config, register_configs
from src.contract import RESULT_KEYS
from src.errors import UserError, first_line, print_error
from src.formatting import headline, plain_when_redirected
from src.pipeline import check_run_dir, run_experiment
from src.sweeps import jobs
from src.train import TrainingPruned

log = logging.getLogger(__name__)
register_configs()


class JobInterrupted(RuntimeError):
    """One job of a scheduler-run sweep was stopped (scancel, time limit); the sweep records it and goes on."""


def _job_has_own_process(hc) -> bool:
    """submitit runs each job in a process of its own (a SLURM job or a local subprocess): stopping one
    job there is not a request to stop the sweep."""
    return "submitit" in str(hc.launcher.get("_target_", ""))


# The targets the config may instantiate (Hydra refuses others): the project's callback; the launchers and
# the sweeper are Hydra plugins, and the sweeper whitelists its own sampler and pruner.
@hydra.main(config_path="../conf", config_name="config", execution_whitelist=("src.sweeps.jobs.ObjectivesCheck",))
def main(cfg: DictConfig) -> float | list[float]:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    interrupts.install()  # schedulers stop jobs with SIGTERM: record "interrupted"
    extra = {"run_dir": str(run_dir), "job_num": hc.job.get("num"), "overrides": list(hc.overrides.task)}
    reporter, trial_id = None, None
    if multirun:  # sweep name, Optuna study / trial / params; CPU share when jobs run side by side
        record = jobs.job_record(cfg, hc, list(hc.overrides.task))
        reporter = _trial_reporter(cfg, hc, record)
        trial_id = record.pop("trial_id", None)
        extra.update(record)
        threads = jobs.job_threads(cfg.trainer.threads, hc)
        if threads:
            cfg.trainer.threads = threads
            log.info("trainer.threads=%d (this job's share of the CPUs under %s)", threads, hc.launcher._target_)
    try:
        if multirun:
            jobs.check_objectives(cfg, RESULT_KEYS)
        val_nll = run_experiment(cfg, run_dir, extra, reporter)
        value = jobs.objective(cfg, run_dir, val_nll) if multirun else val_nll
        if trial_id is not None:
            _attach_images(hc, extra.get("study"), trial_id, run_dir)
    except TrainingPruned as e:  # the trial's pruner stopped it: the sweeper records it PRUNED
        print(f"pruned: {run_dir} ({e})")
        return jobs.PrunedJob(e.epoch, e.value)
    except (UserError, jobs.ObjectiveError) as e:
        if multirun:  # the sweeper reports it (once), Hydra writes it with its traceback into run.log
            raise
        log.error("%s", e)
        sys.exit(print_error(e))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: results.json says "interrupted"; no traceback for a single run
        if multirun and _job_has_own_process(hc):
            # An Exception, not KeyboardInterrupt: Hydra records the job failed and submitit hands that
            # back to the sweeper, which goes on (a KeyboardInterrupt leaves no result and ends the sweep).
            raise JobInterrupted(f"job interrupted (SIGTERM); {run_dir}/results.json says interrupted") from None
        if multirun:
            raise
        print(f"interrupted: rerun the same command with hydra.run.dir={run_dir} to resume", file=sys.stderr)
        sys.exit(130)
    written = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir() if not p.name.startswith("."))
    print(f"done: {run_dir}  ({', '.join(written)})")
    _print_headline(run_dir)
    return value


def _trial_reporter(cfg: DictConfig, hc, record: dict):
    """The job's link to its Optuna trial (interim values, pruning); None outside an Optuna sweep.
    Optuna is imported only by jobs that run a trial."""
    if record.get("trial_id") is None:
        return None
    from src.sweeps.pruning import TrialReporter

    return TrialReporter.for_job(cfg, hc, record)


def _attach_images(hc, study: str | None, trial_id: int, run_dir: Path) -> None:
    """The trial's images as Optuna artifacts when hydra.sweeper.artifact_dir is set (src.sweeps.artifacts)."""
    from src.sweeps.artifacts import upload_images

    upload_images(hc, study, trial_id, run_dir)


def _print_headline(run_dir: Path) -> None:
    import json

    print("  " + headline(json.loads((run_dir / "results.json").read_text())))


def _check_single_run_overrides(argv: list[str]) -> DictConfig | None:
    """Compose a single run's config before Hydra does, so that a wrong type (`prior.K=abc`) or an
    unknown option (`dataset=nope`) is reported in one line (Hydra's own report spans several).
    Returns the config (with its `hydra` node).

    Multiruns, Hydra flags, sweep syntax and named sweeps are left to Hydra untouched (None). A comma
    inside brackets is a list value (`tags=[a,b]`), not sweep syntax.
    """
    if any(a.startswith("-") or _sweep_syntax(a) or a.lstrip("+~").startswith("sweep") for a in argv):
        return None
    from hydra.errors import MissingConfigException

    try:
        return compose_config(*argv, hydra=True)
    except Exception as e:  # noqa: BLE001 - every composition error is the user's input
        msg = first_line(e).rstrip(".")
        if e.__cause__ is not None:
            msg += f": {first_line(e.__cause__)}"
        if isinstance(e, MissingConfigException) and e.options:
            msg += "; choose one of " + ", ".join(e.options)
        sys.exit(print_error(msg))


def _sweep_syntax(override: str) -> bool:
    """`k=1,2`, `k=range(...)`, `k=choice(...)`: a multirun value, which only Hydra's multirun takes."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(override).is_sweep_override()
    except Exception:  # noqa: BLE001 - Hydra reports its own syntax errors
        return True


def _claim_run_dir(cfg: DictConfig) -> str | None:
    """Lock and check an explicit hydra.run.dir before Hydra rewrites its .hydra/ and run.log, so
    that a refused run (dir in use, another run's checkpoints, a shorter resume) changes nothing.

    A timestamped dir (`${now:...}`, the default) is meant to be new: a fresh one is created here,
    with `_2`, `_3`, ... appended when a run started in the same second has it already, and returned
    as the `hydra.run.dir=` override that makes Hydra use it.

    The lock stays held for the whole process (run_experiment finds it held).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    raw = str(OmegaConf.to_container(cfg.hydra.run, resolve=False).get("dir"))
    if "${hydra" in raw:  # values only Hydra's runtime knows
        return None
    if "${now:" in raw:
        return _new_timestamped_dir(cfg)
    try:
        # Resolved twice: a value that changes between resolutions (a clock, a custom resolver) is not
        # the dir Hydra will make, so it is left to run_experiment.
        dirs = {os.path.abspath(str(OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"])) for _ in range(2)}
    except Exception:  # noqa: BLE001 - an interpolation Hydra will report itself
        return None
    if len(dirs) != 1:
        return None
    run_dir = Path(dirs.pop())  # as Hydra makes it
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise rundir.RunDirError(f"hydra.run.dir={run_dir} is a file, not a directory")
        rundir.lock(run_dir)
        if any(p.name != rundir.LOCK_FILE for p in run_dir.iterdir()):
            check_run_dir(cfg, run_dir)  # a fresh dir gets its checks (and a failed record) in run_experiment
    except InterpolationResolutionError:  # a value only Hydra's runtime resolves: run_experiment checks again
        return None
    except UserError as e:
        sys.exit(print_error(e))
    except OSError as e:
        sys.exit(print_error(f"cannot use hydra.run.dir={run_dir}: {e.strerror or e}"))
    return None


def _new_timestamped_dir(cfg: DictConfig) -> str | None:
    """Create and lock a new run dir for a `${now:...}` template; the `hydra.run.dir=` override naming it."""
    from hydra.core.override_parser.types import Quote, QuotedString
    from omegaconf import OmegaConf

    try:
        base = os.path.abspath(str(OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"]))
    except Exception:  # noqa: BLE001 - an interpolation Hydra will report itself
        return None
    try:
        os.makedirs(os.path.dirname(base), exist_ok=True)
        for n in itertools.count(1):
            run_dir = base if n == 1 else f"{base}_{n}"
            try:
                os.mkdir(run_dir)  # atomic: of two runs in the same second, each gets a name of its own
                break
            except FileExistsError:
                continue
        rundir.lock(Path(run_dir))
    except rundir.RunDirError as e:
        sys.exit(print_error(e))
    except OSError as e:
        sys.exit(print_error(f"cannot create a run dir under {os.path.dirname(base)}: {e.strerror or e}"))
    return "hydra.run.dir=" + QuotedString(text=run_dir, quote=Quote.single).with_quotes()


def _pruner_outside_optuna(argv: list[str]) -> str | None:
    """The error for `pruner=NAME` on a command that runs no Optuna sweep (nothing would read it)."""
    chosen = [a.split("=", 1)[1] for a in argv if a.lstrip("+").startswith("pruner=")]
    if not chosen:
        return None
    plain = [a for a in argv if not a.startswith("-") and not _sweep_syntax(a)]
    try:
        target = str(compose_config(*plain, hydra=True).hydra.sweeper._target_)
    except Exception:  # noqa: BLE001 - Hydra reports composition errors itself
        return None
    if target.endswith("CsraeOptunaSweeper"):
        return None
    return f"pruner={chosen[-1]}: pruning needs an Optuna sweep (sweep=NAME of an Optuna sweep file); remove pruner=..."


if __name__ == "__main__":
    # A log line that cannot be written (run.log on a full disk) must not print a traceback of its own:
    # the run's outcome is reported once, by results.json and the error line.
    logging.raiseExceptions = False
    plain_when_redirected()
    for check in (jobs.unknown_sweep, _pruner_outside_optuna):  # Hydra would run the wrong thing silently
        if (bad := check(sys.argv[1:])) is not None:
            sys.exit(print_error(bad))
    composed = _check_single_run_overrides(sys.argv[1:])
    if composed is not None and (pinned := _claim_run_dir(composed)) is not None:
        sys.argv.append(pinned)
    main()
