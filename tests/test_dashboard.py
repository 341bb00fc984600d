"""`python -m src.sweeps dashboard`: optuna-dashboard serves a study on loopback, and a real headless
Chromium renders its study page (the study name, the objective's name and the importance panel in the
DOM, a screenshot that is not blank)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from cli import subprocess_env
from servers import in_ci
from test_report import CHROMIUM_FLAGS

STUDY = "csrae_optuna"


def _chromium() -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        if in_ci():
            pytest.fail("chromium is not installed in CI: .ci/install_chromium.sh should have installed it")
        pytest.skip("chromium not installed (outside CI); run bash .ci/install_chromium.sh")
    return chromium


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dashboard(tmp_path):
    """A study with 12 finished trials in SQLite, made as a sweep makes it (objective named val_nll),
    served by the project's dashboard command."""
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        if in_ci():  # make install installs the dev extras, which include the dashboard
            pytest.fail("optuna-dashboard is not installed in CI (pip install -e '.[dashboard]')")
        pytest.skip("optuna-dashboard not installed: pip install -e '.[dashboard]'")
    import optuna

    from src.sweeps.storage import ensure_study

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = ensure_study(storage, STUDY, ["minimize"], ["val_nll"], sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(
        lambda t: (
            (t.suggest_int("prior.K", 1, 50) - 10) ** 2 + t.suggest_float("model.reg_weight", 0.01, 100, log=True)
        ),
        n_trials=12,
    )
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "src.sweeps",
            "dashboard",
            f"sweep={STUDY}",
            f"hydra.sweeper.storage={storage}",
            "--port",
            str(port),
        ],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert f"study {STUDY}: 12 complete" in line and f"http://127.0.0.1:{port}/dashboard/studies/" in line, line
        url = next(w for w in line.split() if w.startswith("http://"))
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    assert STUDY in r.read().decode()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dashboard_serves_on_loopback_only(dashboard):
    port = int(dashboard.split(":")[2].split("/")[0])
    addresses = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
    for address in addresses:  # the machine's other addresses do not answer
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((address, port)) != 0, f"dashboard reachable on {address}"


def test_dashboard_study_page_renders_in_headless_chromium(dashboard, tmp_path):
    chromium = _chromium()
    common = [chromium, *CHROMIUM_FLAGS, "--window-size=1200,900", "--virtual-time-budget=15000"]
    dom = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'p1'}", "--dump-dom", dashboard],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert STUDY in dom.stdout, f"study name not in the rendered DOM: {dom.stdout[-2000:]} {dom.stderr[-1000:]}"
    # the objective by its name, and the importance panel with both searched parameters in it
    assert "val_nll" in dom.stdout and "Objective 0" not in dom.stdout, dom.stdout[-3000:]
    assert "Hyperparameter Importance" in dom.stdout, dom.stdout[-3000:]
    importance = dom.stdout.split("Hyperparameter Importance", 1)[1]
    assert "prior.K" in importance and "model.reg_weight" in importance, importance[:3000]
    shot = tmp_path / "dashboard.png"
    p = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'p2'}", f"--screenshot={shot}", dashboard],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), f"no screenshot (exit {p.returncode}): {p.stderr[-2000:]}"
    from PIL import Image

    with Image.open(shot) as im:
        grey = np.asarray(im.convert("L"), dtype=float)
    assert grey.std() > 10, "blank screenshot"
    assert (grey < 128).mean() > 0.005, "no dark pixels: no text was rendered"
