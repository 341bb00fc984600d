"""logger=tensorboard and logger=mlflow: what each tracker holds, read back with the tool's own reader,
equals the run's metrics.csv and results.json (which stay the contract)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest


def _metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _ok(p, run_dir: Path) -> dict:
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((run_dir / "results.json").read_text())
    assert r["status"] == "completed"
    return r


def test_tensorboard_event_files_hold_the_metrics_config_and_results(run_cli, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    r = _ok(run_cli(run_dir, "logger=tensorboard", "trainer.epochs=2"), run_dir)
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    rows = _metrics(run_dir)
    assert [e.step for e in acc.Scalars("epoch/val_loss")] == [1, 2]
    for column in ("train_loss", "val_loss", "reg_weight"):
        assert [e.value for e in acc.Scalars(f"epoch/{column}")] == pytest.approx([float(x[column]) for x in rows])
    for key in ("test_nll", "val_nll", "train_seconds"):
        assert acc.Scalars(f"results/{key}")[-1].value == pytest.approx(r[key], rel=1e-6)
    texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]}
    config = next(v for k, v in texts.items() if k.startswith("config"))
    assert "latent_dim: 40" in config and "name: tensorboard" in config
    assert f'"test_nll": {r["test_nll"]}' in next(v for k, v in texts.items() if k.startswith("results"))


def test_mlflow_run_holds_the_metrics_config_and_results(run_cli, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    (tmp_path / "mlflow").mkdir()
    r = _ok(
        run_cli(
            run_dir,
            "logger=mlflow",
            f"logger.tracking_uri={uri}",
            "logger.experiment=trackers",
            "trainer.epochs=2",
            "prior.K=3",
        ),
        run_dir,
    )
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("trackers")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.tags["run_dir"] == str(run_dir)
    rows = _metrics(run_dir)
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([float(x["val_loss"]) for x in rows])
    for key in ("test_nll", "val_nll", "acc"):
        assert run.data.metrics[key] == pytest.approx(r[key])
    assert run.data.params["prior.K"] == "3" and run.data.params["model.name"] == "csrae"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "results.json"}
    stored = json.loads(
        Path(client.download_artifacts(run.info.run_id, "results.json", str(tmp_path / "dl"))).read_text()
    )
    assert stored["test_nll"] == pytest.approx(r["test_nll"]) and stored["status"] == "completed"
    assert (tmp_path / "mlflow" / "artifacts").is_dir()  # beside the store, not in the working directory
    assert not (run_cli.cwd / "mlruns").exists() and not (run_cli.cwd / "mlartifacts").exists()


def test_a_failed_run_is_a_failed_mlflow_run(run_cli, tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    # A failure during training (Adam with lr 1e6 diverges at step 1); missing data fails before the
    # tracker opens, in the preflight, and leaves no tracker run.
    p = run_cli(run_dir, "logger=mlflow", f"logger.tracking_uri={uri}", "trainer.epochs=3", "optimizer.lr=1e6")
    assert p.returncode == 2
    r = json.loads((run_dir / "results.json").read_text())
    assert r["status"] == "failed"
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("csrae-sweeps").experiment_id])
    assert run.info.status == "FAILED" and run.data.params["optimizer.lr"] == "1000000.0"
    stored = json.loads(
        Path(client.download_artifacts(run.info.run_id, "results.json", str(tmp_path / "dl"))).read_text()
    )
    assert stored["status"] == "failed" and stored["error"] == r["error"]


def test_the_logger_is_not_part_of_the_checkpoint_identity(compose):
    from src.pipeline import _settings

    plain = _settings(compose()).fingerprint
    assert _settings(compose("logger=tensorboard")).fingerprint == plain
    assert _settings(compose("logger=mlflow", "logger.experiment=x")).fingerprint == plain
    assert _settings(compose("prior.K=3")).fingerprint != plain  # it does see what matters
