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
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

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

    def log_pretrain_epoch(self, row: dict) -> None:
        pass

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


def open_tracker(cfg, run_dir: Path) -> Tracker:
    """The tracker `cfg.logger` asks for (Tracker() for logger=none or no logger group)."""
    from omegaconf import OmegaConf

    logger = OmegaConf.select(cfg, "logger", default=None) if OmegaConf.is_config(cfg) else getattr(cfg, "logger", None)
    name = (
        getattr(getattr(logger, "name", None), "value", getattr(logger, "name", None)) if logger is not None else None
    )
    if name in (None, "none"):
        return Tracker()
    container = OmegaConf.to_container(
        OmegaConf.structured(cfg) if not OmegaConf.is_config(cfg) else cfg, resolve=True, enum_to_str=True
    )
    config_yaml = OmegaConf.to_yaml(container)
    if name == "tensorboard":
        return TensorBoardTracker(Path(logger.dir) if logger.dir else run_dir / "tensorboard", config_yaml)
    if name == "mlflow":
        return MLflowTracker(
            str(logger.tracking_uri),
            str(logger.experiment),
            logger.run_name or run_dir.name,
            container,
            config_yaml,
            run_dir,
        )
    raise ValueError(f"unknown logger {name!r}")
