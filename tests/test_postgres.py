"""Optuna studies shared through a real PostgreSQL server (docs/SWEEPS.md, "Scaling out").

Needs CSRAE_TEST_PG_URL (a URL without password; libpq takes it from PGPASSFILE or ~/.pgpass): CI
starts a server on 127.0.0.1 with `eval "$(bash .ci/postgres.sh start)"`. Elsewhere these tests skip.
Each test uses a study of its own, deleted afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from cli import subprocess_env
from servers import postgres_url, unavailable
from test_sweeps import _command, results, states

HOW = '`eval "$(bash .ci/postgres.sh start)"` (as root), which sets CSRAE_TEST_PG_URL and PGPASSFILE'


@pytest.fixture(scope="module")
def pg_url() -> str:
    url = postgres_url()
    if url is None:
        unavailable("PostgreSQL", "CSRAE_TEST_PG_URL is not set", HOW)
    try:
        import psycopg  # the driver SQLAlchemy uses for postgresql:// URLs

        psycopg.connect(url, connect_timeout=10).close()
    except Exception as e:  # noqa: BLE001 - any failure to connect means: no server for these tests
        unavailable("PostgreSQL", f"{type(e).__name__}: {str(e).strip().splitlines()[0]}", HOW)
    assert ":" not in url.split("://", 1)[1].split("@")[0], "the test URL must not carry a password"
    return url


def new_study(url: str, request) -> str:
    import optuna

    name = f"test_{request.node.name[:30]}_{uuid.uuid4().hex[:8]}"

    def delete():
        try:
            optuna.delete_study(study_name=name, storage=url)
        except KeyError:
            pass

    request.addfinalizer(delete)
    return name


def worker(
    url: str, study: str, sweep_dir: Path, n_trials: int, cwd: Path, epochs: int = 1, sweep: str = "csrae_optuna"
):
    args = [
        f"sweep={sweep}",
        f"hydra.sweeper.storage={url}",
        f"hydra.sweeper.study_name={study}",
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        _command(*args, epochs=epochs),
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.fixture(scope="module")
def two_workers(pg_url, tmp_path_factory, request):
    """Two sweep processes started together on one fresh study, 3 trials each."""
    root = tmp_path_factory.mktemp("pg")
    study = new_study(pg_url, request)
    procs = [worker(pg_url, study, root / "workers" / f"w{i}", 3, root / f"cwd{i}") for i in (1, 2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return pg_url, study, root / "workers"


def test_two_workers_hold_every_trial_exactly_once(two_workers):
    import optuna

    url, name, workers = two_workers
    study = optuna.load_study(study_name=name, storage=url)
    assert states(study) == {"COMPLETE": 6}
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert all(list(t.intermediate_values) == [1] for t in study.trials)  # each job reported to its trial
    ran = []  # (trial, value) from every job dir of both workers
    for results_json in sorted(workers.glob("w*/*/results.json")):
        r = results(results_json.parent)
        assert r["status"] == "completed" and r["study"] == name
        ran.append((r["trial"], r["val_nll"]))
    assert sorted(t for t, _ in ran) == list(range(6))  # each trial run by exactly one job of one worker
    assert {t: v for t, v in ran} == pytest.approx({t.number: t.value for t in study.trials})
    for t in study.trials:  # the study says where each trial ran
        assert results(Path(t.user_attrs["sweep_dir"]) / str(t.user_attrs["job_num"]))["trial"] == t.number


def test_report_reads_the_shared_study(two_workers, tmp_path):
    import optuna

    url, name, workers = two_workers
    p = subprocess.run(
        [sys.executable, "-m", "src.report", str(workers), "--out", str(tmp_path), "--name", "pg", "--quiet"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    md = (tmp_path / "pg" / "report.md").read_text()
    assert md.count(f"## Optuna study {name}") == 2 and md.count("3 trials (3 completed, 0 pruned, 0 failed)") == 2
    assert md.count("PED-ANOVA") == 2  # importances computed for each worker's section
    study = optuna.load_study(study_name=name, storage=url)
    best = study.best_trial
    assert f"Best trial {best.number} " in md and f"val_nll = {best.value:.4f}" in md

    passfile = os.environ.get("PGPASSFILE")  # the password stays in the pgpass file: in no output at all
    if passfile and Path(passfile).is_file():
        password = Path(passfile).read_text().strip().split(":")[-1]
        for f in [*workers.rglob("*"), *(tmp_path / "pg").rglob("*")]:
            if f.is_file() and f.suffix in (".yaml", ".json", ".log", ".csv", ".md", ".html"):
                assert password not in f.read_text(errors="replace"), f


def test_killed_workers_trial_is_closed_by_close_stale(pg_url, tmp_path, request):
    import optuna

    name = new_study(pg_url, request)
    d = tmp_path / "killed"
    proc = worker(pg_url, name, d, 5, tmp_path / "cwd", epochs=8, sweep="vae_optuna")
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (d / "1" / "results.json").exists():
            assert proc.poll() is None, f"the sweep ended before it could be killed:\n{proc.stdout.read()[-3000:]}"
            time.sleep(0.1)
        assert (d / "1" / "results.json").exists(), "job 1 never started"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert results(d / "1")["status"] == "running"
    study = optuna.load_study(study_name=name, storage=pg_url)
    assert {t.number: t.state.name for t in study.trials}[1] == "RUNNING"

    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "src.sweeps",
            "close-stale",
            "sweep=vae_optuna",
            f"hydra.sweeper.storage={pg_url}",
            f"hydra.sweeper.study_name={name}",
            "--older-than",
            "0",
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "stale RUNNING trials closed" in p.stdout
    study = optuna.load_study(study_name=name, storage=pg_url)
    assert states(study) == {"COMPLETE": 1, "FAIL": 1}
    assert study.trials[0].value == pytest.approx(results(d / "0")["val_nll"])
