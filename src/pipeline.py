"""One experiment, end to end: validate → data → model → train → evaluate → results.json.

No Hydra in here: `run_experiment` takes a composed config (DictConfig or the dataclass schema) and
a run directory, so tests and notebooks can call it directly.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from src import evaluate, rundir, trackers
from src.checkpoints import load_best_weights
from src.config import typed_config, unknown_keys, validate
from src.contract import key_config, write_results
from src.data import check_available, load_dataset
from src.files import replace_atomically, write_error
from src.models import build_model, count_parameters
from src.schema import enum_value
from src.settings import TrainSettings, resolve_device, train_settings
from src.train import TrainingPruned, build_optimizer, fit

log = logging.getLogger(__name__)


def check_run_dir(cfg, run_dir: Path) -> tuple[TrainSettings, torch.device]:
    """Everything checked before a run starts, writing nothing: the configuration, what run_dir already
    holds (src.rundir.check), the device, the dataset's files and the tracker's settings. Returns what the
    run derives from the configuration once: the training loop's settings and the device."""
    validate(cfg)
    settings = train_settings(cfg)
    rundir.check(run_dir, settings)
    device = resolve_device(cfg.trainer.device)
    check_available(cfg.dataset)
    trackers.check(cfg, run_dir)
    return settings, device


def run_experiment(cfg, run_dir: Path, extra: dict | None = None, reporter=None) -> float:
    """Train and evaluate one configuration in run_dir; returns the validation NLL (finite).

    Writes results.json with status running → completed | failed | interrupted | pruned. Raises on
    failure (never returns NaN) so that sweepers record the trial as failed. Holds the run dir's lock
    (src.rundir) throughout; a run dir in use, or holding another run, is refused before anything
    in it changes.

    reporter (a sweep's trial, src.sweeps.pruning.TrialReporter): gets an interim validation NLL after
    the epochs it is due; when it answers True, training stops, the final evaluation is skipped,
    results.json says pruned and TrainingPruned is raised.
    """
    run_dir, cfg = Path(run_dir), typed_config(cfg)
    with _shown_unless_logging_is_set_up():
        took_lock = rundir.lock(run_dir)  # False when this process already holds it (src.run takes it before Hydra)
        try:
            return _run(cfg, run_dir, extra, reporter)
        finally:
            if took_lock:
                rundir.unlock(run_dir)


@contextlib.contextmanager
def _shown_unless_logging_is_set_up():
    """Called from Python with no logging set up, Python would show only warnings: the run's lines
    (epochs, a resume, a finished run evaluated again) then go to stderr as plain text, as
    `python -m src.run` shows them. Where logging is set up (Hydra, an application), it decides."""
    if logging.getLogger().hasHandlers():
        yield
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger, level = logging.getLogger("src"), logging.getLogger("src").level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _run(cfg, run_dir: Path, extra: dict | None, reporter=None) -> float:
    results: dict = {"status": "running", **(extra or {})}
    settings, device = _preflight(cfg, run_dir, results)
    tracker = trackers.Tracker()
    try:
        write_results(run_dir, results)
        _record_config(cfg, run_dir)
        tracker = trackers.open_tracker(cfg, run_dir)
        if cfg.trainer.threads:
            torch.set_num_threads(cfg.trainer.threads)
        results.update(_train_and_evaluate(cfg, run_dir, settings, device, tracker, reporter))
        results["status"] = "completed"
        write_results(run_dir, results)
        return results["val_nll"]
    except TrainingPruned as e:
        results.update(status="pruned", epochs_run=e.epoch, interim_val_nll=e.value, train_seconds=e.train_seconds)
        write_results(run_dir, results)
        log.info("%s: the study's pruner stopped this trial; no final evaluation", e)
        raise
    except KeyboardInterrupt:
        results.update(
            status="interrupted", error=f"interrupted (Ctrl-C or SIGTERM); rerun with hydra.run.dir={run_dir} to resume"
        )
        _record_end(run_dir, results)
        raise
    except Exception as e:
        disk = write_error(e)  # disk full, quota, read-only: the user's to fix, in one line
        results.update(status="failed", error=str(disk) if disk else f"{type(e).__name__}: {e}")
        _record_end(run_dir, results)
        if disk:
            raise disk from None
        raise
    finally:
        tracker.finish(results)  # a tracker's failure is a warning, never the run's outcome (src.trackers)


def _record_end(run_dir: Path, results: dict) -> None:
    """Write the failed or interrupted record; a failure to write it must not hide why the run ended."""
    try:
        write_results(run_dir, results)
    except OSError as e:
        log.error("results.json could not record the %s run: %s", results["status"], e.strerror or e)


def _record_config(cfg, run_dir: Path) -> None:
    """A run started from Python gets the .hydra/config.yaml that Hydra writes for the command line, so
    that its directory describes it the same way (load_model, reports). Hydra's own file is kept."""
    path = run_dir / ".hydra" / "config.yaml"
    if path.exists():
        return
    path.parent.mkdir(exist_ok=True)
    with replace_atomically(path) as tmp:
        tmp.write_text(OmegaConf.to_yaml(cfg if OmegaConf.is_config(cfg) else OmegaConf.structured(cfg)))


def _preflight(cfg, run_dir: Path, results: dict) -> tuple[TrainSettings, torch.device]:
    """Checks that load nothing (check_run_dir): the config, what the run dir already holds, the
    device, that the dataset's files are there, the tracker's settings.

    A failure here leaves an earlier run's results.json in this directory untouched (its record
    stays true); in a fresh directory it writes status failed, like any other failure.
    """
    try:
        results.update(key_config(cfg))
        for warning in unknown_keys(cfg):
            log.warning("%s", warning)
        settings, device = check_run_dir(cfg, run_dir)
        if settings.kmeans_epoch is not None and settings.kmeans_epoch > settings.epochs:
            log.warning(
                "prior.kmeans_epoch=%d > trainer.epochs=%d: the k-means refit of the GMM prior will not happen",
                settings.kmeans_epoch,
                settings.epochs,
            )
        return settings, device
    except Exception as e:
        if not (run_dir / "results.json").exists() and not rundir.holdings(run_dir):
            _record_end(run_dir, {**results, "status": "failed", "error": f"{type(e).__name__}: {e}"})
        raise


def _train_and_evaluate(
    cfg, run_dir: Path, settings: TrainSettings, device: torch.device, tracker: trackers.Tracker, reporter=None
) -> dict:
    torch.manual_seed(cfg.trainer.seed)
    data = load_dataset(cfg.dataset)
    model = build_model(cfg.model, cfg.prior, data.image_shape).to(device)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optimizer)
    log.info(
        "%s + %s prior (K=%d) on %s: %d train / %d val / %d test, %d parameters, device %s",
        enum_value(cfg.model.name),
        enum_value(cfg.prior.name),
        cfg.prior.K,
        data.name,
        len(data.train.x),
        len(data.val.x),
        len(data.test.x),
        count_parameters(model),
        device,
    )

    def report_interim(epoch: int, last: bool) -> None:  # a sweep's trial (src.sweeps.pruning)
        if reporter.due(epoch):
            ev = cfg.eval
            value = evaluate.interim_nll(model, data.val.x, ev.interim_is_samples, ev.interim_points, device)
            # after the last epoch, stopping saves no training: the trial completes and is evaluated
            if reporter.report(epoch, value) and not last:
                raise TrainingPruned(epoch, value)

    state = fit(
        model,
        data,
        optimizer,
        settings,
        run_dir,
        device,
        tracker.log_epoch,
        tracker.log_pretrain_epoch,
        report_interim if reporter else None,
    )
    load_best_weights(model, run_dir, settings.fingerprint, state.best_epoch)

    return {
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
        "train_seconds": state.train_seconds,
        "compile_seconds": state.compile_seconds if cfg.trainer.compile else None,
        "n_params": count_parameters(model),
        "device": str(device),
        **evaluate.evaluate_model(model, data, cfg.eval, cfg.trainer.seed, run_dir, device),
    }
