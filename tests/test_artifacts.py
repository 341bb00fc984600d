"""hydra.sweeper.artifact_dir: each Optuna trial's images become Optuna artifacts, served by the
project's dashboard command; without it no artifact is stored."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest
from cli import subprocess_env
from test_dashboard import _free_port
from test_sweeps import load_study, optuna_args, results, sweep


def _artifacts(study):
    import optuna

    return {t.number: optuna.artifacts.get_all_artifact_meta(t, storage=study._storage) for t in study.trials}


def test_each_trials_images_are_artifacts_the_dashboard_serves(tmp_path):
    pytest.importorskip("optuna_dashboard", reason="the dashboard extra: pip install -e '.[dashboard]'")
    store = tmp_path / "artifacts"
    args = [*optuna_args(tmp_path, "csrae_optuna", "s", 2), "pruner=none", "eval.images=true"]
    sweep(tmp_path, *args, f"hydra.sweeper.artifact_dir={store}")
    study = load_study(tmp_path, "csrae_optuna")
    metas = _artifacts(study)
    assert sorted(metas) == [0, 1]
    for t in study.trials:
        images = results(tmp_path / "s" / str(t.user_attrs["job_num"]))["images"]
        assert images and sorted(m.filename for m in metas[t.number]) == sorted(n.split("/")[-1] for n in images)
        assert all(m.mimetype == "image/png" and (store / m.artifact_id).is_file() for m in metas[t.number])

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "src.sweeps", "dashboard", *args[:3], f"hydra.sweeper.artifact_dir={store}"]
        + ["--port", str(port)],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    trial = study.trials[0]
    meta = metas[0][0]
    url = f"http://127.0.0.1:{port}/artifacts/{study._study_id}/{trial._trial_id}/{meta.artifact_id}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    body = r.read()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
                time.sleep(0.3)
        assert body[:8] == b"\x89PNG\r\n\x1a\n" and body == (store / meta.artifact_id).read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_without_an_artifact_dir_no_artifact_is_stored(tmp_path):
    sweep(tmp_path, *optuna_args(tmp_path, "csrae_optuna", "s", 1), "pruner=none", "eval.images=true")
    study = load_study(tmp_path, "csrae_optuna")
    assert results(tmp_path / "s" / "0")["images"] and _artifacts(study) == {0: []}
