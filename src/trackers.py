"""Optional experiment trackers: `logger=tensorboard` or `logger=mlflow` (default `logger=none`).

Copies of what the run directory already holds, for people who browse runs in those tools: the
composed config, each epoch's metrics.csv row and the final results.json numbers. metrics.csv and
results.json stay the contract (docs/CONTRACT.md); a tracker never changes them, and the logger
settings are not part of the checkpoint fingerprint (a run can be resumed with another logger).

- tensorboard: event files in `logger.dir` (default `<run dir>/tensorboard`), written with torch's
  SummaryWriter; scalars `epoch/<column>` per epoch, `results/<key>` at the end, the config and the
  results as text. View: `tensorboard --logdir outputs/`.
- mlflow: one MLflow run per job in `logger.tracking_uri` (default a SQLite store under
  outputs/mlflow/, artifacts beside it; or a tracking server's URL), experiment `logger.experiment`;
  params = the flattened config, metrics per epoch (step = epoch) and at the end, artifacts
  config.yaml and results.json, status FINISHED / FAILED / KILLED. A resumed run starts a new
  MLflow run. View: `mlflow ui --backend-store-uri sqlite:///outputs/mlflow/mlflow.db`.

A tracker is a copy, so it is handled in two steps:
- `check(cfg, run_dir)`, before the run starts and writing nothing: the package is installed, the
  tracking URI is one MLflow takes and its server or database answers (in seconds: MLflow itself
  retries for minutes), logger.dir can be written. What fails is a one-line ConfigError.
- `open_tracker(cfg, run_dir)`: a tracker that fails to open, or fails later (a server that goes
  away, a full disk under logger.dir), is dropped with one warning and the run goes on without it.
  MLflow's HTTP requests are retried twice with a 10 s timeout (MLFLOW_HTTP_REQUEST_MAX_RETRIES
  and MLFLOW_HTTP_REQUEST_TIMEOUT, when not set, instead of MLflow's 7 retries and 120 s).
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from src.config import ConfigError

log = logging.getLogger(__name__)

MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def _numbers(d: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in d.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _flatten(d: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(d) if isinstance(d, list) else str(d)}


class Tracker:
    """logger=none: does nothing."""

    def log_epoch(self, row: dict) -> None:
        pass

    def finish(self, results: dict) -> None:
        pass


class TensorBoardTracker(Tracker):
    def __init__(self, log_dir: Path, config_yaml: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("config", f"```\n{config_yaml}\n```", 0)
        self.step = 0

    def log_epoch(self, row: dict) -> None:
        self.step = int(row["epoch"])
        for key, value in _numbers(row).items():
            if key != "epoch":
                self.writer.add_scalar(f"epoch/{key}", value, self.step)
        self.writer.flush()

    def finish(self, results: dict) -> None:
        for key, value in _numbers(results).items():
            self.writer.add_scalar(f"results/{key}", value, self.step)
        self.writer.add_text("results", f"```\n{json.dumps(results, indent=2, default=str)}\n```", self.step)
        self.writer.close()


class MLflowTracker(Tracker):
    def __init__(
        self, tracking_uri: str, experiment: str, run_name: str, config: dict, config_yaml: str, run_dir: Path
    ):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a server gone mid-run: seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.client = MlflowClient(tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:  # beside a local SQLite store, not in the working directory (MLflow's default)
            local = tracking_uri.startswith("sqlite:///")
            artifacts = (
                (Path(tracking_uri[len("sqlite:///") :]).resolve().parent / "artifacts").as_uri() if local else None
            )
            experiment_id = self.client.create_experiment(experiment, artifact_location=artifacts)
        run = self.client.create_run(experiment_id, run_name=run_name, tags={"run_dir": str(run_dir)})
        self.run_id = run.info.run_id
        params = [Param(k, v[:6000]) for k, v in _flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_text(self.run_id, config_yaml, "config.yaml")
        self.step = 0

    def _log(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in _numbers(values).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_epoch(self, row: dict) -> None:
        self.step = int(row["epoch"])
        self._log({k: v for k, v in row.items() if k != "epoch"}, self.step)

    def finish(self, results: dict) -> None:
        self._log(results, self.step)
        self.client.log_dict(self.run_id, json.loads(json.dumps(results, default=str)), "results.json")
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(results.get("status"), "FAILED"))


def _logger(cfg) -> tuple[Any, str | None]:
    """The logger config and its name (None for logger=none or no logger group)."""
    from omegaconf import OmegaConf

    logger = OmegaConf.select(cfg, "logger", default=None) if OmegaConf.is_config(cfg) else getattr(cfg, "logger", None)
    name = getattr(logger, "name", None)
    name = getattr(name, "value", name)  # an enum by its name
    return logger, None if name in (None, "none") else name


def _event_dir(logger, run_dir: Path) -> Path:
    return Path(logger.dir) if logger.dir else Path(run_dir) / "tensorboard"


def check(cfg, run_dir: Path) -> None:
    """The logger's settings, checked before the run starts; ConfigError (one line) names what to fix."""
    logger, name = _logger(cfg)
    if name is None:
        return
    try:
        importlib.import_module("torch.utils.tensorboard" if name == "tensorboard" else "mlflow")
    except ImportError as e:
        raise ConfigError(
            f"logger={name} needs the {name} package ({_first_line(e)}): pip install -e .[{name}], or use logger=none"
        ) from None
    if name == "tensorboard":
        _check_writable("logger.dir", _event_dir(logger, run_dir))
    elif name == "mlflow":
        _check_tracking_uri(str(logger.tracking_uri))
    else:
        raise ConfigError(f"unknown logger {name!r}")


def _check_writable(key: str, path: Path) -> None:
    """path, or the directory it would be created in, can be written."""
    existing = next(p for p in [Path(path).absolute(), *Path(path).absolute().parents] if p.exists())
    why = "is not a directory" if not existing.is_dir() else None
    if why is None and not os.access(existing, os.W_OK | os.X_OK):
        why = "cannot be written"
    if why:
        raise ConfigError(f"{key}={path} cannot be used: {existing} {why}; choose another {key}, or use logger=none")


_SERVER_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


def _check_tracking_uri(uri: str) -> None:
    """A URI MLflow takes, whose server or database answers now (one attempt each, a few seconds).
    Its password, if it holds one, is masked in the message."""
    from src.sweeps.storage import scrub

    try:
        _try_tracking_uri(uri)
    except ConfigError as e:
        raise ConfigError(scrub(e, uri)) from None


def _try_tracking_uri(uri: str) -> None:
    key = f"logger.tracking_uri={uri}"
    try:
        parts = urlsplit(uri)
        scheme = parts.scheme.split("+")[0]  # postgresql+psycopg2 -> postgresql
        if scheme in _SERVER_PORTS:
            if not parts.hostname:
                raise ConfigError(f"{key} names no host; give {scheme}://HOST[:PORT]/..., or use logger=none")
            host, port = parts.hostname, parts.port or _SERVER_PORTS[scheme]
            try:
                socket.create_connection((host, port), timeout=5).close()
            except OSError as e:
                raise ConfigError(
                    f"{key}: nothing answers at {host}:{port} ({e.strerror or e}); start the server, or use logger=none"
                ) from None
        if scheme in ("postgresql", "mysql", "mssql"):
            import sqlalchemy

            engine = sqlalchemy.create_engine(uri)
            try:
                engine.connect().close()
            finally:
                engine.dispose()
        elif scheme == "sqlite":
            database = uri[len("sqlite:///") :]
            if database and database != ":memory:":
                _check_writable("logger.tracking_uri", Path(database).parent)
        elif scheme not in _SERVER_PORTS:
            from mlflow import MlflowClient

            MlflowClient(uri)  # MLflow's own verdict on the scheme (and its file store); builds nothing for these
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever MLflow or the database driver says, in one line
        raise ConfigError(f"{key}: {_first_line(e)}; fix it, or use logger=none") from None


def _first_line(e: BaseException) -> str:
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
    return text.split(". ")[0][:300]


def _drop(logger, name: str, e: Exception) -> None:
    from src.sweeps.storage import scrub

    log.warning(
        "logger=%s failed (%s: %s); the run goes on without it (metrics.csv and results.json are the record)",
        name,
        type(e).__name__,
        scrub(_first_line(e), logger.tracking_uri),  # a server's URL may hold a password
    )


class _Guarded(Tracker):
    """A tracker that stops copying, with one warning, the first time it fails: the run goes on."""

    def __init__(self, logger, name: str, tracker: Tracker):
        self.logger, self.name, self.tracker = logger, name, tracker

    def _call(self, method: str, arg: dict) -> None:
        if self.tracker is None:
            return
        try:
            getattr(self.tracker, method)(arg)
        except Exception as e:  # noqa: BLE001 - a copy failing never fails the run
            self.tracker = None
            _drop(self.logger, self.name, e)

    def log_epoch(self, row: dict) -> None:
        self._call("log_epoch", row)

    def finish(self, results: dict) -> None:
        self._call("finish", results)


def open_tracker(cfg, run_dir: Path) -> Tracker:
    """The tracker `cfg.logger` asks for (Tracker() for logger=none), its settings already checked
    (check). One that fails to open, or fails later, is dropped with one warning."""
    from omegaconf import OmegaConf

    logger, name = _logger(cfg)
    if name is None:
        return Tracker()
    try:
        container = OmegaConf.to_container(
            OmegaConf.structured(cfg) if not OmegaConf.is_config(cfg) else cfg, resolve=True, enum_to_str=True
        )
        config_yaml = OmegaConf.to_yaml(container)
        if name == "tensorboard":
            tracker = TensorBoardTracker(_event_dir(logger, run_dir), config_yaml)
        else:
            tracker = MLflowTracker(
                str(logger.tracking_uri),
                str(logger.experiment),
                logger.run_name or run_dir.name,
                container,
                config_yaml,
                run_dir,
            )
    except Exception as e:  # noqa: BLE001 - reported once, as any later failure of the tracker
        _drop(logger, name, e)
        return Tracker()
    return _Guarded(logger, name, tracker)
