"""Optional experiment trackers: `logger=tensorboard` or `logger=mlflow` (default `logger=none`).

Copies of what the run directory already holds, for people who browse runs in those tools: the
composed config, each epoch's metrics.csv and pretrain_metrics.csv row, the final results.json
numbers and the run's images. metrics.csv and results.json stay the contract (docs/CONTRACT.md); a
tracker never changes them, and the logger settings are not part of the checkpoint fingerprint (a
run can be resumed with another logger).

Names, the same in both trackers where they can be:
- run name: `logger.run_name`, else what ran, `<model>-<prior>-K<K>-w<reg_weight>-s<seed>`
  (`csrae-gmm-K10-w3-s0`, `run_name`);
- params / hparams: the flattened config (`prior.K`, `model.reg_weight`, ...);
- per-epoch metrics: the metrics.csv columns with step = epoch (TensorBoard: `epoch/<column>`);
- pretraining: `pretrain/<column>` of pretrain_metrics.csv with step = pretraining epoch;
- final results: `final/<key>` for the results.json numbers that are outcomes (`final/test_nll`,
  `final/val_nll`, `final/acc`, ... `FINAL_KEYS`), not the config columns (those are params);
- images: the run's PNGs (`results.json` `images`): MLflow artifacts `images/<file>`,
  TensorBoard images `images/<name>`.

- tensorboard: event files in `<logger.dir>/<run name>` (default `<run dir>/tensorboard/<run name>`),
  written with torch's SummaryWriter; scalars, images, the config and the results as text, and
  HParams (the config and the final/ metrics, with the run's status) when the run ends, so the
  HParams tab lists the jobs of a sweep side by side. View: `tensorboard --logdir outputs/`. Jobs
  that share a `logger.dir` and a run name (a sweep over a setting the name leaves out) share one
  TensorBoard run: give them a `logger.run_name` each.
- mlflow: one MLflow run per job in `logger.tracking_uri` (default a SQLite store under
  outputs/mlflow/, artifacts beside it; or a tracking server's URL), experiment `logger.experiment`;
  params, metrics, artifacts config.yaml, results.json and images/, status FINISHED / FAILED /
  KILLED. A resumed run starts a new MLflow run. View:
  `mlflow ui --backend-store-uri sqlite:///outputs/mlflow/mlflow.db`.

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
from src.contract import CONFIG_COLUMNS, FLOAT_KEYS, INT_KEYS, RESULT_KEYS, key_config
from src.errors import first_line
from src.schema import enum_value

log = logging.getLogger(__name__)

MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "pruned": "KILLED"}

#: The results.json numbers a tracker logs as final/<key>: the outcomes, not the config columns.
FINAL_KEYS = [k for k in RESULT_KEYS if k in INT_KEYS + FLOAT_KEYS and k not in CONFIG_COLUMNS]
FINAL = "final/"
PRETRAIN = "pretrain/"


def run_name(cfg) -> str:
    """What ran, for a tracker's run list: csrae-gmm-K10-w3-s0 (model, prior, K, reg_weight, seed)."""
    k = key_config(cfg)
    return f"{k['model']}-{k['prior']}-K{k['K']}-w{k['reg_weight']:g}-s{k['seed']}"


def _numbers(d: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in d.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _final(results: dict) -> dict[str, float]:
    return {FINAL + k: v for k, v in _numbers(results).items() if k in FINAL_KEYS}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"prior.K": 10, ...}: scalars as they are, lists as JSON text."""
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(d) if isinstance(d, list) else d}


def _images(results: dict, run_dir: Path) -> list[Path]:
    return [run_dir / name for name in results.get("images") or [] if (run_dir / name).is_file()]


class Tracker:
    """logger=none: does nothing."""

    def log_pretrain_epoch(self, row: dict) -> None:
        pass

    def log_epoch(self, row: dict) -> None:
        pass

    def finish(self, results: dict) -> None:
        pass


class TensorBoardTracker(Tracker):
    def __init__(self, log_dir: Path, config: dict, config_yaml: str, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("config", f"```\n{config_yaml}\n```", 0)
        self.config, self.run_dir = config, run_dir
        self.step = 0

    def _scalars(self, prefix: str, row: dict, step: int) -> None:
        for key, value in _numbers(row).items():
            if key != "epoch":
                self.writer.add_scalar(prefix + key, value, step)
        self.writer.flush()

    def log_pretrain_epoch(self, row: dict) -> None:
        self._scalars(PRETRAIN, row, int(row["epoch"]))

    def log_epoch(self, row: dict) -> None:
        self.step = int(row["epoch"])
        self._scalars("epoch/", row, self.step)

    def finish(self, results: dict) -> None:
        import numpy as np
        from PIL import Image

        for tag, value in _final(results).items():
            self.writer.add_scalar(tag, value, self.step)
        for path in _images(results, self.run_dir):
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            self.writer.add_image(f"images/{path.stem}", pixels, self.step, dataformats="HWC")
        self.writer.add_text("results", f"```\n{json.dumps(results, indent=2, default=str)}\n```", self.step)
        self._hparams(results.get("status"))
        self.writer.close()

    def _hparams(self, status: str | None) -> None:
        """The HParams plugin's summaries: the config as hparams, the final/ scalars of this run as its
        metrics (every FINAL_KEYS tag, so that each job lists the same columns) and the run's status."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
        from torch.utils.tensorboard.summary import hparams

        # Booleans as text: torch's hparams() would make them 1.0 / 0.0.
        values = {k: str(v) if isinstance(v, bool) else v for k, v in _flatten(self.config).items()}
        experiment, start, _ = hparams(values, {FINAL + k: None for k in FINAL_KEYS})
        end = plugin_data_pb2.HParamsPluginData(
            session_end_info=plugin_data_pb2.SessionEndInfo(
                status=api_pb2.STATUS_SUCCESS if status == "completed" else api_pb2.STATUS_FAILURE,
                end_time_secs=time.time(),
            ),
            version=metadata.PLUGIN_DATA_VERSION,
        )
        end = Summary(
            value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=metadata.create_summary_metadata(end))]
        )
        for summary in (experiment, start, end):
            self.writer.file_writer.add_summary(summary, self.step)


class MLflowTracker(Tracker):
    def __init__(
        self, tracking_uri: str, experiment: str, run_name: str, config: dict, config_yaml: str, run_dir: Path
    ):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a server gone mid-run: seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow import MlflowClient
        from mlflow.entities import Param

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
        self.run_id, self.run_dir = run.info.run_id, run_dir
        params = [Param(k, str(v)[:6000]) for k, v in _flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_text(self.run_id, config_yaml, "config.yaml")
        self.step = 0

    def _log(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_pretrain_epoch(self, row: dict) -> None:
        self._log({PRETRAIN + k: v for k, v in _numbers(row).items() if k != "epoch"}, int(row["epoch"]))

    def log_epoch(self, row: dict) -> None:
        self.step = int(row["epoch"])
        self._log({k: v for k, v in _numbers(row).items() if k != "epoch"}, self.step)

    def finish(self, results: dict) -> None:
        self._log(_final(results), self.step)
        for path in _images(results, self.run_dir):
            self.client.log_artifact(self.run_id, str(path), "images")
        self.client.log_dict(self.run_id, json.loads(json.dumps(results, default=str)), "results.json")
        self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(results.get("status"), "FAILED"))


def _logger(cfg) -> tuple[Any, str | None]:
    """The logger config and its name (None for logger=none or no logger group)."""
    from omegaconf import OmegaConf

    logger = OmegaConf.select(cfg, "logger", default=None) if OmegaConf.is_config(cfg) else getattr(cfg, "logger", None)
    name = getattr(logger, "name", None)
    name = enum_value(name)
    return logger, None if name in (None, "none") else name


def _event_dir(logger, run_dir: Path) -> Path:
    """Where TensorBoard's runs go: logger.dir, else <run dir>/tensorboard (each run in <run name>/)."""
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
            f"logger={name} needs the {name} package ({_reason(e)}): pip install -e .[{name}], or use logger=none"
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
        raise ConfigError(f"{key}: {_reason(e)}; fix it, or use logger=none") from None


def _reason(e: BaseException) -> str:
    """An exception's first sentence, short enough for one line."""
    return first_line(e).split(". ")[0][:300]


def _drop(logger, name: str, e: Exception) -> None:
    from src.sweeps.storage import scrub

    log.warning(
        "logger=%s failed (%s: %s); the run goes on without it (metrics.csv and results.json are the record)",
        name,
        type(e).__name__,
        scrub(_reason(e), logger.tracking_uri),  # a server's URL may hold a password
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

    def log_pretrain_epoch(self, row: dict) -> None:
        self._call("log_pretrain_epoch", row)

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
        title = logger.run_name or run_name(cfg)
        if name == "tensorboard":
            tracker = TensorBoardTracker(_event_dir(logger, run_dir) / title, container, config_yaml, run_dir)
        else:
            tracker = MLflowTracker(
                str(logger.tracking_uri), str(logger.experiment), title, container, config_yaml, run_dir
            )
    except Exception as e:  # noqa: BLE001 - reported once, as any later failure of the tracker
        _drop(logger, name, e)
        return Tracker()
    return _Guarded(logger, name, tracker)
