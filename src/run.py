"""Hydra entry point: `python -m src.run model=csrae prior.K=10` (add -m for sweeps).

Thin on purpose: compose the config, hand it to the pipeline, return the objective for sweepers
(the validation NLL; a sweep's `sweep.objectives` may list other results.json keys, see
src/sweeps.py). Known user errors print one line and exit non-zero in a single run; in a multirun
they are raised so the sweeper records the job as failed and goes on.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from src import sweeps
from src.config import register_configs
from src.pipeline import RESULT_KEYS, USER_ERRORS, run_experiment

log = logging.getLogger(__name__)
register_configs()


def _sigterm_as_interrupt(signum, frame):  # schedulers stop jobs with SIGTERM: record "interrupted"
    raise KeyboardInterrupt


class JobInterrupted(RuntimeError):
    """One job of a scheduler-run sweep was stopped (scancel, time limit); the sweep records it and goes on."""


def _job_has_own_process(hc) -> bool:
    """submitit runs each job in a process of its own (a SLURM job or a local subprocess): stopping one
    job there is not a request to stop the sweep."""
    return "submitit" in str(hc.launcher.get("_target_", ""))


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | list[float]:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    except ValueError:  # not the main thread (some launchers): keep the default handler
        pass
    extra = {"run_dir": str(run_dir), "job_num": hc.job.get("num"), "overrides": list(hc.overrides.task)}
    if multirun:  # sweep name, Optuna study / trial / params; CPU share when jobs run side by side
        extra.update(sweeps.job_record(cfg, hc, list(hc.overrides.task)))
        threads = sweeps.job_threads(cfg.trainer.threads, hc)
        if threads:
            cfg.trainer.threads = threads
            log.info("trainer.threads=%d (this job's share of the CPUs under %s)", threads, hc.launcher._target_)
    try:
        if multirun:
            sweeps.check_objectives(cfg, RESULT_KEYS)
        val_nll = run_experiment(cfg, run_dir, extra)
        value = sweeps.objective(cfg, run_dir, val_nll) if multirun else val_nll
    except (*USER_ERRORS, sweeps.ObjectiveError) as e:
        log.error("%s", e)
        if multirun:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
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


def _print_headline(run_dir: Path) -> None:
    import json

    r = json.loads((run_dir / "results.json").read_text())
    parts = [f"test NLL {r['test_nll']:.2f} ± {r['test_nll_sem']:.2f} nats (S={r['is_samples']})",
             f"val NLL {r['val_nll']:.2f}"]
    if r.get("acc") is not None:
        parts.append(f"ACC {r['acc']:.3f} ({r['acc_mapping']}) NMI {r['nmi']:.3f} ARI {r['ari']:.3f}")
    parts.append(f"{r['epochs_run']} epochs, training {r['train_seconds']:.1f}s, evaluation {r['eval_seconds']:.1f}s")
    print("  " + " | ".join(parts))


def _check_single_run_overrides(argv: list[str]) -> None:
    """Compose a single run's config before Hydra does, so that a wrong type (`prior.K=abc`) or an
    unknown option (`dataset=nope`) is reported in one line (Hydra's own report spans several).

    Multiruns, Hydra flags, sweep syntax and named sweeps are left to Hydra untouched.
    """
    if any(a.startswith("-") or "," in a or "(" in a or a.lstrip("+~").startswith("sweep") for a in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException

    try:
        with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
            compose("config", overrides=argv)
    except Exception as e:  # noqa: BLE001 - every composition error is the user's input
        first = lambda x: next((ln.strip() for ln in str(x).splitlines() if ln.strip()), type(x).__name__)  # noqa
        msg = first(e).rstrip(".")
        if e.__cause__ is not None:
            msg += f": {first(e.__cause__)}"
        if isinstance(e, MissingConfigException) and e.options:
            msg += "; choose one of " + ", ".join(o for o in e.options if not o.endswith("_schema"))
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    if (bad := sweeps.unknown_sweep(sys.argv[1:])) is not None:  # Hydra would skip an unknown sweep silently
        print(f"error: {bad}", file=sys.stderr)
        sys.exit(2)
    _check_single_run_overrides(sys.argv[1:])
    main()
