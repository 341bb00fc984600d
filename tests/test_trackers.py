"""logger=tensorboard and logger=mlflow: what each tracker holds, read back with the tool's own reader
(EventAccumulator and the HParams plugin; MlflowClient), equals the run's metrics.csv,
pretrain_metrics.csv, results.json and images (which stay the contract)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import TINY


def _metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _ok(p, run_dir: Path) -> dict:
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((run_dir / "results.json").read_text())
    assert r["status"] == "completed"
    return r


def _pretrain_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "pretrain_metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


# Two pretraining epochs, two training epochs and the images: everything a tracker copies.
FULL = ("trainer.epochs=2", "trainer.pretrain_epochs=2", "eval.images=true", "eval.n_images=16", "prior.K=3")
# results.json keys that are config columns (params / hparams), never final/ metrics.
CONSTANTS = ("K", "seed", "latent_dim", "epochs", "is_samples", "pretrain_epochs", "reg_weight", "lr")


def _hparams_tab(logdir: Path):
    """What TensorBoard's HParams tab shows for logdir, computed by the hparams plugin itself: the
    experiment (its hparam and metric columns) and the session groups (one row per run)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(
        logdir=str(logdir), multiplexer=mux, data_provider=data_provider.MultiplexerDataProvider(mux, str(logdir))
    )
    backend, ctx = backend_context.Context(tb), context.RequestContext()
    experiment = get_experiment.Handler(ctx, backend, "", api_pb2.GetExperimentRequest()).run()
    request = api_pb2.ListSessionGroupsRequest(slice_size=100, allowed_statuses=api_pb2.Status.values())
    return experiment, list_session_groups.Handler(ctx, backend, "", request).run().session_groups


def test_tensorboard_holds_metrics_pretraining_images_results_and_hparams_of_each_sweep_job(run_cli, tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2

    sweep_dir = tmp_path / "sweep"
    p = run_cli(
        tmp_path / "unused",
        "-m",  # before the overrides
        *TINY,
        "logger=tensorboard",
        *FULL,
        "model.reg_weight=1,3",
        f"hydra.sweep.dir={sweep_dir}",
        tiny=False,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    names = {"0": "csrae-gmm-K3-w1-s0", "1": "csrae-gmm-K3-w3-s0"}  # what ran, not the job number
    results = {}
    for job, name in names.items():
        run_dir = sweep_dir / job
        r = results[name] = _ok(p, run_dir)
        acc = EventAccumulator(
            str(run_dir / "tensorboard" / name), size_guidance={"scalars": 0, "tensors": 0, "images": 0}
        )
        acc.Reload()
        rows = _metrics(run_dir)
        for column in ("train_loss", "val_loss", "reg_weight", "lr"):
            events = acc.Scalars(f"epoch/{column}")
            assert [e.step for e in events] == [1, 2]
            assert [e.value for e in events] == pytest.approx([float(x[column]) for x in rows])
        pretrain = _pretrain_metrics(run_dir)
        for column in ("train_recon", "val_recon"):
            events = acc.Scalars(f"pretrain/{column}")
            assert [e.step for e in events] == [1, 2]
            assert [e.value for e in events] == pytest.approx([float(x[column]) for x in pretrain])
        for key in ("test_nll", "val_nll", "acc", "train_seconds"):
            (event,) = acc.Scalars(f"final/{key}")
            assert event.value == pytest.approx(r[key], rel=1e-6)
        assert not {f"final/{k}" for k in CONSTANTS} & set(acc.Tags()["scalars"])
        assert len(r["images"]) == 4 and set(acc.Tags()["images"]) == {f"images/{Path(f).stem}" for f in r["images"]}
        for f in r["images"]:
            (image,) = acc.Images(f"images/{Path(f).stem}")
            assert (image.width, image.height) == Image.open(run_dir / f).size
        texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]}
        config = next(v for k, v in texts.items() if k.startswith("config"))
        assert "latent_dim: 40" in config and "name: tensorboard" in config
        assert f'"test_nll": {r["test_nll"]}' in next(v for k, v in texts.items() if k.startswith("results"))

    experiment, groups = _hparams_tab(sweep_dir)
    columns = {h.name for h in experiment.hparam_infos}
    assert {"model.name", "model.reg_weight", "prior.K", "trainer.seed", "optimizer.lr"} <= columns
    assert {"final/test_nll", "final/val_nll", "final/acc"} <= {m.name.tag for m in experiment.metric_infos}
    assert sorted(g.name.rsplit("/", 1)[-1] for g in groups) == sorted(names.values())
    for group in groups:
        r = results[group.name.rsplit("/", 1)[-1]]
        assert group.hparams["model.reg_weight"].number_value == r["reg_weight"]
        assert group.hparams["prior.K"].number_value == 3 and group.hparams["model.name"].string_value == "csrae"
        metrics = {m.name.tag: m.value for m in group.metric_values}
        assert metrics["final/test_nll"] == pytest.approx(r["test_nll"], rel=1e-6)
        assert metrics["final/acc"] == pytest.approx(r["acc"], rel=1e-6)
        assert [s.status for s in group.sessions] == [api_pb2.STATUS_SUCCESS]


def test_mlflow_run_holds_params_metrics_pretraining_results_and_images(run_cli, tmp_path):
    from mlflow import MlflowClient

    from src.contract import METRIC_COLUMNS, PRETRAIN_COLUMNS

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    (tmp_path / "mlflow").mkdir()
    r = _ok(
        run_cli(
            run_dir,
            "logger=mlflow",
            f"logger.tracking_uri={uri}",
            "logger.experiment=trackers",
            *FULL,
            "trainer.seed=4",
        ),
        run_dir,
    )
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("trackers")
    (run,) = client.search_runs([exp.experiment_id])
    run_id = run.info.run_id
    assert run.info.run_name == "csrae-gmm-K3-w1-s4" and run.info.status == "FINISHED"
    assert run.data.tags["run_dir"] == str(run_dir)
    assert run.data.params["prior.K"] == "3" and run.data.params["model.name"] == "csrae"
    assert run.data.params["trainer.pretrain_epochs"] == "2" and run.data.params["eval.n_images"] == "16"

    # Per-epoch metrics under their metrics.csv names, one value per epoch (step = epoch).
    rows = _metrics(run_dir)
    for column in METRIC_COLUMNS[1:]:
        history = client.get_metric_history(run_id, column)
        assert [m.step for m in history] == [1, 2], column
        assert [m.value for m in history] == pytest.approx([float(x[column]) for x in rows])
    pretrain = _pretrain_metrics(run_dir)
    for column in PRETRAIN_COLUMNS[1:]:
        history = client.get_metric_history(run_id, f"pretrain/{column}")
        assert [m.step for m in history] == [1, 2], column
        assert [m.value for m in history] == pytest.approx([float(x[column]) for x in pretrain])
    # Final results under final/, once each; the config's constants are params, not metrics.
    for key in ("test_nll", "val_nll", "acc", "best_epoch", "n_params"):
        (m,) = client.get_metric_history(run_id, f"final/{key}")
        assert m.value == pytest.approx(r[key])
    per_epoch = set(METRIC_COLUMNS[1:]) | {f"pretrain/{c}" for c in PRETRAIN_COLUMNS[1:]}
    assert {k for k in run.data.metrics if not k.startswith("final/")} == per_epoch
    assert not {f"final/{k}" for k in CONSTANTS} & set(run.data.metrics)

    assert {a.path for a in client.list_artifacts(run_id)} == {"config.yaml", "results.json", "images"}
    assert {a.path for a in client.list_artifacts(run_id, "images")} == {f"images/{f}" for f in r["images"]}
    assert len(r["images"]) == 4
    image = Path(client.download_artifacts(run_id, "images/samples.png", str(tmp_path / "dl")))
    assert image.read_bytes() == (run_dir / "samples.png").read_bytes()
    config = Path(client.download_artifacts(run_id, "config.yaml", str(tmp_path / "dl"))).read_text()
    assert "K: 3" in config and "pretrain_epochs: 2" in config
    stored = json.loads(Path(client.download_artifacts(run_id, "results.json", str(tmp_path / "dl"))).read_text())
    assert stored["test_nll"] == pytest.approx(r["test_nll"]) and stored["status"] == "completed"
    assert (tmp_path / "mlflow" / "artifacts").is_dir()  # beside the store, not in the working directory
    assert not (run_cli.cwd / "mlruns").exists() and not (run_cli.cwd / "mlartifacts").exists()


def test_the_run_name_says_what_ran_and_logger_run_name_overrides_it(compose, tmp_path):
    from tensorboard.plugins.hparams import api_pb2

    from src.trackers import open_tracker, run_name

    assert run_name(compose()) == "csrae-gmm-K10-w1-s0"
    assert run_name(compose("model=vae", "prior=vamp", "prior.K=50", "model.reg_weight=0.5", "trainer.seed=7")) == (
        "vae-vamp-K50-w0.5-s7"
    )
    tracker = open_tracker(compose("logger=tensorboard", f"logger.dir={tmp_path}", "logger.run_name=mine"), tmp_path)
    tracker.finish({"status": "failed"})
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]
    _, (group,) = _hparams_tab(tmp_path)
    assert group.name == "mine" and group.hparams["trainer.checkpoint"].string_value == "True"
    assert [s.status for s in group.sessions] == [api_pb2.STATUS_FAILURE]  # a failed run is no success


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
    from src.settings import train_settings

    plain = train_settings(compose()).fingerprint
    assert train_settings(compose("logger=tensorboard")).fingerprint == plain
    assert train_settings(compose("logger=mlflow", "logger.experiment=x")).fingerprint == plain
    assert train_settings(compose("prior.K=3")).fingerprint != plain  # it does see what matters
