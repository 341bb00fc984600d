"""Hostile but realistic use of reports, sweeps and Optuna studies: one test per case.

Each test is something a user really does (a typo, a rerun, Ctrl-C, a broken file) and says in its
docstring what happened before the fix. The cases are grouped by the promise they check:

1. Nothing a user has is lost: the report deletes only files it wrote itself.
2. Every number belongs to the command that printed it: an unknown sweep name runs nothing; the
   report never stops on one bad run, and lists it as excluded with its reason.
3. One line, exit 2, no traceback: broken study storage, bad arguments, n_trials < 1, a sweep whose
   every trial fails.
4. Secrets and formats: storage passwords are never printed; report.md is inert HTML-wise.
5. Concurrency and signals: close-stale leaves a live sweep alone; SIGTERM / SIGINT stop a sweep
   cleanly.

To add a case, put a test in its section, named after what the user did. Real runs on digits use the
tiny settings (1 epoch, S = 10, no images, one thread); study files and sweep dirs live in tmp_path.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from cli import subprocess_env

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "trainer.epochs=1",
    "eval.is_samples=10",
    "eval.images=false",
    "trainer.progress=false",
    "trainer.threads=1",
    "trainer.device=cpu",
]
SWEEP_NAMES = ["csrae_nsga2", "csrae_optuna", "prior_families", "vae_optuna", "vae_vs_csrae"]


# --- helpers ------------------------------------------------------------------------------------


def python(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )


def optuna_sweep(
    tmp_path: Path,
    *overrides: str,
    storage: str | None = None,
    n_trials: int = 2,
    name: str = "vae_optuna",
    sweep_dir: str = "sweep",
) -> list[str]:
    """The arguments of `python -m src.run -m sweep=NAME ...` with the study and sweep dir in tmp_path."""
    storage = storage or f"sqlite:///{tmp_path / 'study.db'}"
    return [
        "-m",
        "src.run",
        "-m",
        f"sweep={name}",
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.storage={storage}",
        f"hydra.sweep.dir={tmp_path / sweep_dir}",
        *TINY,
        *overrides,
    ]


def assert_one_line_error(p: subprocess.CompletedProcess, *words: str, code: int = 2) -> str:
    """Exit `code`, no traceback, exactly one `error:` line on stderr, holding every word; returns it."""
    out = p.stdout + p.stderr
    assert p.returncode == code, f"exit {p.returncode}\n{out[-3000:]}"
    assert "Traceback" not in out and "Set the environment variable HYDRA_FULL_ERROR" not in out, out[-3000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, p.stderr[-3000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def load_study(tmp_path: Path, name: str = "vae_optuna"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'study.db'}")


def edit_results(run_dir: Path, **changes) -> None:
    path = run_dir / "results.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory) -> Path:
    """A real grid of two jobs whose `tags` are lists (`-m 'tags=[],[baseline]'`): the base of the
    report cases, which copy it and break one thing each."""
    base = tmp_path_factory.mktemp("hostile")
    p = python("-m", "src.run", "-m", "tags=[],[baseline]", *TINY, f"hydra.sweep.dir={base / 'grid'}", cwd=base / "cwd")
    assert p.returncode == 0, p.stderr[-3000:]
    return base / "grid"


def report(target: Path, out: Path, name: str = "rep") -> subprocess.CompletedProcess:
    return python("-m", "src.report", str(target), "--out", str(out), "--name", name, "--quiet", cwd=out / "cwd")


def copy_runs(two_runs: Path, dest: Path) -> Path:
    shutil.copytree(two_runs, dest, ignore=shutil.ignore_patterns("checkpoints"))
    return dest


# --- 1. nothing a user has is lost --------------------------------------------------------------


def test_report_named_after_its_own_run_dir_deletes_nothing(two_runs, tmp_path):
    """`python -m src.report X --out PARENT --name X`, twice: both refuse in one line, so the second call
    cannot delete the run's metrics.csv and images as if the first had made X a report dir."""
    run = shutil.copytree(two_runs / "0", tmp_path / "X")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    for _ in range(2):
        assert_one_line_error(report(run, tmp_path, "X"), "holds a run")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_report_refuses_a_sweep_dir_and_a_dir_inside_a_run(two_runs, tmp_path):
    """--out/--name pointing at a sweep dir (or into a run dir) would mix report files with results."""
    sweep = copy_runs(two_runs, tmp_path / "sweep")
    assert_one_line_error(report(sweep, tmp_path, "sweep"), "holds a run or a sweep")
    assert_one_line_error(report(sweep, sweep / "0", "rep"), "inside the run directory")
    assert not (sweep / "index.html").exists() and not (sweep / "0" / "rep").exists()


def test_report_rerun_deletes_only_files_listed_in_its_manifest(two_runs, tmp_path):
    """A user's own files in a report dir (notes, a figure of their own) must not be deleted by the
    next report (it cleared every .png/.csv/.md/.html). A stale figure of the report itself still goes."""
    out = tmp_path / "reports"
    assert report(two_runs, out).returncode == 0
    rep = out / "rep"
    assert "nll_vs_k.png" in json.loads((rep / ".csrae_report").read_text())["files"]
    (rep / "my_figure.png").write_bytes(b"mine")
    (rep / "notes.md").write_text("mine")
    (rep / "nll_vs_k.png").write_bytes(b"stale, written by the report")
    assert report(two_runs, out).returncode == 0
    assert (rep / "my_figure.png").read_bytes() == b"mine" and (rep / "notes.md").read_text() == "mine"
    assert (rep / "nll_vs_k.png").read_bytes() != b"stale, written by the report"


def test_report_refuses_a_non_empty_dir_it_did_not_write(two_runs, tmp_path):
    """--name of an existing folder of the user's: index.html and report.md there would be overwritten."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "index.html").write_text("my page")
    assert_one_line_error(report(two_runs, tmp_path, "mine"), "not written by python -m src.report")
    assert (mine / "index.html").read_text() == "my page"


# --- 2. numbers belong to the command: sweep names, bad runs in a report -------------------------


@pytest.mark.parametrize("name", ["csrae_optun", "nope"])
def test_misspelt_sweep_name_runs_nothing(tmp_path, name):
    """`-m sweep=csrae_optun` is refused with one line: the config's `optional sweep` skips an unknown
    name silently, so Hydra alone would run one default job without Optuna and exit 0."""
    p = python("-m", "src.run", "-m", f"sweep={name}", *TINY, cwd=tmp_path / "cwd", timeout=120)
    line = assert_one_line_error(p, f"unknown sweep {name}", *SWEEP_NAMES)
    assert "choose one of" in line
    assert not (tmp_path / "cwd" / "outputs").exists()  # nothing ran


def test_list_values_of_known_options_are_not_refused():
    """`experiment=[digits_smoke]` composes in Hydra; the name check must look inside the list."""
    from src.sweeps.jobs import unknown_sweep

    assert unknown_sweep(["experiment=[digits_smoke]"]) is None
    assert unknown_sweep(["+experiment=[digits_smoke,mnist_density]", "sweep=vae_optuna"]) is None
    assert "unknown experiment nope" in unknown_sweep(["experiment=[digits_smoke,nope]"])


def test_misspelt_experiment_name_runs_nothing(tmp_path):
    """`experiment=mnist_densty` trained the default digits run and exited 0 (the config's
    `optional experiment` skips an unknown name silently, like `sweep`)."""
    p = python("-m", "src.run", "experiment=mnist_densty", *TINY, cwd=tmp_path / "cwd", timeout=120)
    line = assert_one_line_error(p, "unknown experiment mnist_densty", "mnist_density", "digits_smoke")
    assert "conf/experiment/" in line
    assert not (tmp_path / "cwd" / "outputs").exists()


def test_misspelt_debug_name_runs_nothing(tmp_path):
    """`debug=smok` would skip the shortcut silently and train the full default run."""
    p = python("-m", "src.run", "debug=smok", "trainer.device=cpu", cwd=tmp_path / "cwd", timeout=120)
    line = assert_one_line_error(p, "unknown debug smok", "smoke")
    assert "conf/debug/" in line
    assert not (tmp_path / "cwd" / "outputs").exists()


def test_report_of_a_python_api_run(tmp_path):
    """A run made with `run_experiment(cfg, dir)` has no job_num: the report stopped on KeyError."""
    from helpers import compose_config

    from src.pipeline import run_experiment

    run_experiment(compose_config("trainer.seed=3"), tmp_path / "api_run")
    p = report(tmp_path / "api_run", tmp_path / "reports")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "1 runs, 1 completed" in p.stdout


def test_report_of_runs_with_list_valued_tags(two_runs, tmp_path):
    """`-m 'tags=[],[baseline]'`: the report stopped on "unhashable type: 'list'"."""
    p = report(two_runs, tmp_path / "reports")
    assert p.returncode == 0, p.stderr[-3000:]
    runs = pd.read_csv(tmp_path / "reports" / "rep" / "runs.csv")
    assert sorted(runs["cfg.tags"]) == ['["baseline"]', "[]"] and (runs["status"] == "completed").all()


@pytest.mark.parametrize("key", ["test_nll", "fewlabel_lr_10"])
def test_report_excludes_a_run_with_a_non_numeric_result(two_runs, tmp_path, key):
    """test_nll "n/a" in one results.json: the run is excluded with its reason (report and stderr),
    the other run still counts. A summary metric outside the checked keys (fewlabel_lr_10) excludes the
    run too, rather than counting it with the value turned into NaN silently."""
    d = copy_runs(two_runs, tmp_path / "runs")
    edit_results(d / "1", **{key: "n/a"})
    p = report(d, tmp_path / "reports")
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"excluded: 1 (invalid): bad value: {key}='n/a' is not a number" in p.stderr.splitlines()
    md = (tmp_path / "reports" / "rep" / "report.md").read_text()
    assert "## Excluded runs (1)" in md and f"{key}=&#x27;n/a&#x27; is not a number" in md.replace("'", "&#x27;")
    summary = pd.read_csv(tmp_path / "reports" / "rep" / "summary.csv")
    assert summary["n_runs"].sum() == 1


def test_report_survives_a_failed_run_with_a_huge_seed(two_runs, tmp_path):
    """A failed run of trainer.seed=2**70 anywhere in the tree: the report stopped on an int64 cast."""
    d = copy_runs(two_runs, tmp_path / "runs")
    shutil.copytree(d / "0", d / "deep" / "er" / "huge_seed")
    edit_results(
        d / "deep" / "er" / "huge_seed",
        status="failed",
        seed=2**70,
        test_nll=None,
        error="ConfigError: trainer.seed out of range",
    )
    p = report(d, tmp_path / "reports")
    assert p.returncode == 0, p.stderr[-3000:]
    line = next(ln for ln in p.stderr.splitlines() if ln.startswith("excluded: deep/er/huge_seed (failed)"))
    assert "trainer.seed out of range" in line and "is not a 64-bit integer" in line
    runs = pd.read_csv(tmp_path / "reports" / "rep" / "runs.csv")
    assert sorted(runs.loc[runs["status"] == "completed", "seed"]) == [0, 0]  # still integers


def test_report_survives_a_config_yaml_that_is_not_a_mapping(two_runs, tmp_path):
    """.hydra/config.yaml holding a YAML list (a hand-edited or foreign file): AttributeError before."""
    d = copy_runs(two_runs, tmp_path / "runs")
    (d / "1" / ".hydra" / "config.yaml").write_text("- a\n- b\n")
    p = report(d, tmp_path / "reports")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "2 runs, 2 completed" in p.stdout


# --- 3. one line, exit 2, no traceback ------------------------------------------------------------


def _garbage(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 20)


def _corrupt(path: Path) -> None:  # a real study database cut in half
    from src.sweeps.storage import ensure_study

    ensure_study(f"sqlite:///{path}", "vae_optuna", ["minimize"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["garbage", "corrupt", "read-only"])
def test_sweep_on_a_broken_study_file(tmp_path, kind):
    """A corrupt, garbage or read-only SQLite study: ~79 lines of SQLAlchemy before, and for a
    read-only file optuna's misleading "exceeding max length"."""
    db = tmp_path / "study.db"
    storage = f"sqlite:///{db}"
    if kind == "read-only":  # mode=ro: read-only even for root, which ignores file permissions
        from src.sweeps.storage import ensure_study

        ensure_study(storage, "vae_optuna", ["minimize"])
        storage = f'"sqlite:///file:{db}?mode=ro&uri=true"'
    else:
        (_garbage if kind == "garbage" else _corrupt)(db)
    p = python(*optuna_sweep(tmp_path, storage=storage), cwd=tmp_path / "cwd", timeout=120)
    line = assert_one_line_error(p, "study storage")
    assert ("read-only" if kind == "read-only" else "not a readable SQLite database") in line
    assert "max length" not in p.stdout + p.stderr
    assert not (tmp_path / "sweep" / "0").exists()


@pytest.mark.parametrize("kind", ["garbage", "corrupt"])
@pytest.mark.parametrize("command", ["create", "show", "export", "close-stale"])
def test_sweeps_cli_on_a_broken_study_file(tmp_path, capsys, kind, command):
    from src.sweeps.cli import main

    db = tmp_path / "study.db"
    (_garbage if kind == "garbage" else _corrupt)(db)
    capsys.readouterr()
    assert (
        main([command, "sweep=vae_optuna", f"hydra.sweeper.storage=sqlite:///{db}", "--out", str(tmp_path / "t.csv")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: study storage") and err.count("\n") == 1 and "not a readable SQLite" in err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["show", "sweep=vae_optuna", "prior.K=abc"], ["prior.K=abc"]),
        (["shw", "sweep=vae_optuna"], ["invalid choice: 'shw'"]),
        (["close-stale", "sweep=vae_optuna", "--older-than", "-5"], ["--older-than"]),
        (["close-stale", "sweep=vae_optuna", "--older-than", "soon"], ["--older-than"]),
        (["show", "sweep=vae_optun"], ["unknown sweep vae_optun", "vae_optuna"]),
        (["show", "sweep=vae_vs_csrae"], ["no Optuna storage", "vae_optuna"]),
    ],
)
def test_sweeps_cli_bad_arguments(capsys, argv, words):
    """Bad overrides or arguments to `python -m src.sweeps`: tracebacks (composition errors) or
    argparse's usage block before; an unknown sweep did not list the names."""
    from src.sweeps.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1, err
    for w in words:
        assert w in err


def test_sweeps_cli_show_does_not_create_a_study_file(tmp_path, capsys):
    """`show` with a mistyped storage path creates nothing there (opening a SQLite URL would create an
    empty database)."""
    from src.sweeps.cli import main

    missing = tmp_path / "typo" / "study.db"
    assert main(["show", "sweep=vae_optuna", f"hydra.sweeper.storage=sqlite:///{missing}"]) == 2
    assert "no study storage at" in capsys.readouterr().err
    assert not missing.exists() and not missing.parent.exists()


def test_sweeps_cli_export_into_a_directory(tmp_path, capsys):
    """`export --out DIR` ended in a traceback (IsADirectoryError); now one line."""
    from src.sweeps.cli import main
    from src.sweeps.storage import ensure_study

    storage = f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}"
    ensure_study(f"sqlite:///{tmp_path / 'study.db'}", "vae_optuna", ["minimize"])
    (tmp_path / "out").mkdir()
    capsys.readouterr()  # what creating the study logged
    assert main(["export", "sweep=vae_optuna", storage, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "is a directory" in err


@pytest.mark.parametrize("n", [0, -1])
def test_sweep_with_no_trials_to_run(tmp_path, n):
    """hydra.sweeper.n_trials<=0 ended in "Record does not exist" (exit 1) after touching the study."""
    p = python(*optuna_sweep(tmp_path, n_trials=n), cwd=tmp_path / "cwd", timeout=120)
    assert_one_line_error(p, f"hydra.sweeper.n_trials={n}", "at least 1")
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "sweep" / "0").exists()


@pytest.mark.parametrize(
    "sweep, objectives",
    [
        ("vae_optuna", "sweep.objectives=[test_nll]"),
        ("csrae_nsga2", "sweep.objectives=[val_nll,acc]"),  # clustering ACC on the test set
        ("vae_vs_csrae", "+sweep.objectives=[fewlabel_lr_10]"),  # a grid (its sweep file names no objective)
    ],
)
def test_sweep_that_would_select_on_test_data(tmp_path, sweep, objectives):
    """sweep.objectives=[test_nll] would have the search choose on test data: it is refused in one line,
    before a study or a job directory exists, and the error for an unknown objective never suggests it."""
    args = ["-m", "src.run", "-m", f"sweep={sweep}", objectives, f"hydra.sweep.dir={tmp_path / 'sweep'}", *TINY]
    if sweep != "vae_vs_csrae":
        args.append(f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}")
    p = python(*args, cwd=tmp_path / "cwd", timeout=120)
    assert_one_line_error(p, "measured on the test set", "validation only")
    assert not (tmp_path / "study.db").exists() and not (tmp_path / "sweep").exists()


def test_sweep_in_which_every_trial_fails(tmp_path):
    """Every trial fails (here: a clustering objective with K = 1): one line quoting the jobs' own
    error (once for the two trials that share it) and where the logs are; trials.csv is written."""
    p = python(*optuna_sweep(tmp_path, "prior.K=1", "sweep.objectives=[val_acc]"), cwd=tmp_path / "cwd")
    line = assert_one_line_error(p, "all 2 trials of this sweep failed", "val_acc", str(tmp_path / "sweep"))
    assert "trials 0, 1: ObjectiveError: objective 'val_acc' is None" in line, line
    assert "Record does not exist" not in line and "Job failed" not in line
    assert (tmp_path / "sweep" / "trials.csv").is_file()
    assert [t.state.name for t in load_study(tmp_path).trials] == ["FAIL", "FAIL"]


def storage_blips_twice(config, trial):
    """custom_search_space hook: the study storage fails twice (a server restarting) when trial 0 is told."""
    from sqlalchemy.exc import OperationalError

    if trial.number != 0:
        return
    storage, blips = trial.study._storage, iter(range(2))
    tell = storage.set_trial_state_values

    def flaky(*args, **kwargs):
        if next(blips, None) is not None:
            raise OperationalError("UPDATE trials", {}, Exception("server closed the connection unexpectedly"))
        return tell(*args, **kwargs)

    storage.set_trial_state_values = flaky


def storage_breaks(config, trial):
    """custom_search_space hook: the SQLite study file is overwritten with garbage while trial 1 runs."""
    if trial.number == 1:
        path = str(config.hydra.sweeper.storage).removeprefix("sqlite:///")
        with open(path, "r+b") as f:
            f.write(b"not a database any more" * 200)


def test_a_storage_that_fails_for_a_moment_is_tried_again(tmp_path):
    """PostgreSQL restarted mid-sweep: a 130-line traceback and a completed job's trial left RUNNING.
    Storage calls are tried again for a while, so a short outage costs nothing."""
    hook = "hydra.sweeper.custom_search_space=tests.test_hostile_sweeps.storage_blips_twice"
    p = python(*optuna_sweep(tmp_path, hook), cwd=tmp_path / "cwd")
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert (p.stdout + p.stderr).count("server closed the connection unexpectedly; trying again") == 2
    assert [t.state.name for t in load_study(tmp_path).trials] == ["COMPLETE", "COMPLETE"]


def test_a_storage_that_stays_broken_stops_the_sweep_in_one_line(tmp_path):
    """The study file broke mid-sweep (disk full, corrupt): a traceback and no trials.csv. Now one line that
    says what to run once the storage works again, and trials.csv from what the jobs recorded."""
    hook = "hydra.sweeper.custom_search_space=tests.test_hostile_sweeps.storage_breaks"
    p = python(*optuna_sweep(tmp_path, hook, n_trials=3), cwd=tmp_path / "cwd")
    assert_one_line_error(p, "not a readable SQLite database", "close-stale sweep=vae_optuna")
    assert "trying again" not in p.stdout + p.stderr  # a corrupt file is not waited for
    with open(tmp_path / "sweep" / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["number"], r["run_status"]) for r in rows] == [("0", "completed"), ("1", "completed")]
    assert all(float(r["val_nll"]) > 0 for r in rows)
    assert not (tmp_path / "sweep" / "2").exists()  # nothing ran after the storage broke


def test_retrying_gives_up_in_one_error_after_its_waits(monkeypatch):
    from sqlalchemy.exc import OperationalError

    from src.sweeps import storage

    calls = []

    def down():
        calls.append(1)
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(storage, "STORAGE_WAITS", (0, 0))
    with pytest.raises(storage.StudyStorageError, match="connection refused"):
        storage.retrying("postgresql://u:hunter2@db/x", down)
    assert len(calls) == 3


# --- 4. secrets and formats ------------------------------------------------------------------------

SECRET_URLS = [
    "postgresql://alice:hunter2secret@db.example.org:5432/optuna",
    "postgresql://alice@corp.example.org:hunter2secret@db.example.org/optuna",  # @ in the user name
    "postgresql://db.example.org/optuna?user=alice&password=hunter2secret",  # password in the query
    "mysql+pymysql://alice:hunter2secret@db/optuna?ssl=true",
    "postgresql://alice:hun@ter2secret@db/optuna",  # unencoded @ in the password
    "postgresql//alice:hunter2secret@db/optuna",  # not a URL SQLAlchemy parses
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_storage_password_is_never_shown(url):
    from src.sweeps.storage import masked, scrub

    for text in (masked(url), scrub(f"could not connect to {url}", url)):
        assert "hunter2" not in text and "ter2secret" not in text and "***" in text, text
    assert "db" in masked(url)  # still says where


def test_sweeps_cli_never_prints_the_storage_password(tmp_path, capsys):
    """A password in the query string was printed by `create` (the old mask only knew user:pw@)."""
    from src.sweeps.cli import main

    url = f"sqlite:///{tmp_path / 'study.db'}?password=hunter2secret"
    assert main(["create", "sweep=vae_optuna", f'hydra.sweeper.storage="{url}"']) == 0
    unreachable = "postgresql://alice@corp.example.org:hunter2secret@127.0.0.1:1/optuna"
    assert main(["show", "sweep=vae_optuna", f"hydra.sweeper.storage={unreachable}"]) == 2
    out = capsys.readouterr()
    assert "hunter2" not in out.out + out.err and "***" in out.out


def test_sweep_log_never_prints_the_storage_password(tmp_path):
    """The sweep names its storage with the password masked, in the log and in every file it writes."""
    url = f'"sqlite:///{tmp_path / "study.db"}?password=hunter2secret"'
    p = python(*optuna_sweep(tmp_path, storage=url, n_trials=1), cwd=tmp_path / "cwd")
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"no trials yet in sqlite:///{tmp_path / 'study.db'}" in p.stdout + p.stderr
    assert "hunter2" not in p.stdout + p.stderr
    for f in ("trials.csv", "0/results.json", "0/run.log"):
        assert "hunter2" not in (tmp_path / "sweep" / f).read_text()


def test_report_md_escapes_html_from_runs(two_runs, tmp_path):
    """An error text or a path with HTML in it went into report.md raw (index.html escaped it)."""
    d = copy_runs(two_runs, tmp_path / "runs")
    evil = "<img src=x onerror=alert(1)>"
    edit_results(d / "1", status="failed", error=f"ValueError: {evil}")
    shutil.copytree(d / "0", d / "<b>bold</b>")
    p = report(d, tmp_path / "reports")
    assert p.returncode == 0, p.stderr[-3000:]
    md = (tmp_path / "reports" / "rep" / "report.md").read_text()
    assert "&lt;img src=x onerror=alert(1)&gt;" in md and "&lt;b&gt;bold&lt;/b&gt;" in md
    assert "<img" not in md and "<b>" not in md


# --- 5. concurrency and signals -----------------------------------------------------------------------


def _start_long_sweep(tmp_path: Path) -> subprocess.Popen:
    """A 2-trial sweep whose first trial trains long enough to be caught running (job 0 started)."""
    args = optuna_sweep(tmp_path, "trainer.epochs=300", "trainer.patience=1000")
    (tmp_path / "cwd").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=tmp_path / "cwd",
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 180
    job = tmp_path / "sweep" / "0" / "results.json"
    while time.time() < deadline and not (job.exists() and "running" in job.read_text()):
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended early: {proc.communicate()[1][-3000:]}")
        time.sleep(0.1)
    assert job.exists(), "job 0 never started"
    time.sleep(1.0)  # into the data loading / training
    return proc


def test_close_stale_leaves_a_running_sweep_alone(tmp_path, capsys):
    """`close-stale --older-than 0` while a sweep runs leaves its running trial alone: only trials whose
    sweep process is gone are closed (failing a live one would crash the sweep when it tells the study)."""
    from src.sweeps.cli import main

    storage = f"hydra.sweeper.storage=sqlite:///{tmp_path / 'study.db'}"
    proc = _start_long_sweep(tmp_path)
    try:
        assert main(["close-stale", "sweep=vae_optuna", storage, "--older-than", "0"]) == 0
        assert "left RUNNING: trials [0]" in capsys.readouterr().out
        assert load_study(tmp_path).trials[0].state.name == "RUNNING"
    finally:
        proc.kill()  # SIGKILL: the process is gone, nothing recorded
        proc.communicate()
    assert main(["close-stale", "sweep=vae_optuna", storage, "--older-than", "0"]) == 0
    assert "FAIL [0]" in capsys.readouterr().out
    assert load_study(tmp_path).trials[0].state.name == "FAIL"


def test_close_stale_asks_before_closing_trials_it_cannot_check(tmp_path):
    """A RUNNING trial of a sweep on another host: its process cannot be checked from here, so it is
    left alone (with a warning in the CLI) unless --force says no sweep runs it."""
    from src.sweeps.storage import ensure_study
    from src.sweeps.trials import close_stale

    study = ensure_study(f"sqlite:///{tmp_path / 'study.db'}", "s", ["minimize"])
    t = study.ask()
    for key, value in {"pid": 1, "host": "another-host.example.org", "sweep_dir": str(tmp_path), "job_num": 0}.items():
        t.set_user_attr(key, value)
    assert close_stale(study, 0) == {"complete": [], "fail": [], "alive": [], "unverified": [0]}
    assert study.trials[0].state.name == "RUNNING"
    assert close_stale(study, 0, force=True)["fail"] == [0]


def test_close_stale_never_takes_values_of_another_studys_trial(tmp_path):
    """A job dir whose results.json belongs to another study with the same trial number: its values
    were recorded as this trial's (COMPLETE with another study's val_nll)."""
    from src.sweeps.storage import ensure_study
    from src.sweeps.trials import close_stale

    study = ensure_study(f"sqlite:///{tmp_path / 'study.db'}", "mine", ["minimize"])
    t = study.ask()
    t.set_user_attr("sweep_dir", str(tmp_path))
    t.set_user_attr("job_num", 0)
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "results.json").write_text(
        json.dumps({"status": "completed", "study": "theirs", "trial": 0, "val_nll": 1.0})
    )
    assert close_stale(study, 0, force=True) == {"complete": [], "fail": [0], "alive": [], "unverified": []}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_a_sweep_cleanly(tmp_path, sig):
    """SIGTERM or Ctrl-C to a sweep: the trial in flight is FAIL (interrupted) rather than left RUNNING,
    trials.csv is written, and the exit is one line, 130, with no traceback."""
    proc = _start_long_sweep(tmp_path)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)  # generous: on a loaded machine the bookkeeping after the stop is slow
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in out + err
    assert [ln for ln in err.splitlines() if ln.startswith("interrupted:")] == [err.strip().splitlines()[-1]]
    trial = load_study(tmp_path).trials[0]
    assert trial.state.name == "FAIL" and trial.user_attrs["interrupted"] is True
    assert len(load_study(tmp_path).trials) == 1  # nothing ran after the signal
    assert (tmp_path / "sweep" / "trials.csv").is_file()
    assert json.loads((tmp_path / "sweep" / "0" / "results.json").read_text())["status"] == "interrupted"


def test_sweep_that_flips_the_direction_of_an_existing_study(tmp_path):
    """A rerun with hydra.sweeper.direction=maximize on a study created to minimize: one line that says
    what to do, not Optuna's traceback (ValueError: Cannot overwrite study direction)."""
    from src.sweeps.storage import ensure_study

    ensure_study(f"sqlite:///{tmp_path / 'study.db'}", "vae_optuna", ["minimize"])
    p = python(*optuna_sweep(tmp_path, "hydra.sweeper.direction=maximize"), cwd=tmp_path / "cwd", timeout=120)
    assert_one_line_error(p, "was created to minimize", "asks to maximize", "study_name")
    assert load_study(tmp_path).trials == []


def test_a_second_signal_cannot_cut_the_interrupt_bookkeeping_short(monkeypatch, tmp_path):
    """While a stopped sweep records its trial FAIL (interrupted) and writes trials.csv, a second SIGTERM
    (`kill PID; kill PID`) raised KeyboardInterrupt there: a traceback and the trial left RUNNING. Stops
    are ignored from then on, until the process exits."""
    import optuna
    from omegaconf import OmegaConf

    from src.sweeps import sweeper as sweeper_module

    seen = {}

    class StoppedSweep:
        running: list = []

        def __init__(self, *args):
            pass

        def run(self, *args):
            raise KeyboardInterrupt

    def bookkeeping(study, running, storage):
        seen.update(term=signal.getsignal(signal.SIGTERM), int=signal.getsignal(signal.SIGINT))
        return [0]

    study = optuna.create_study()
    monkeypatch.setattr(sweeper_module, "preflight", lambda config, settings: None)
    monkeypatch.setattr(sweeper_module, "search_space", lambda params, arguments: ({}, {}, []))
    monkeypatch.setattr(sweeper_module, "ensure_study", lambda *args, **kwargs: study)
    monkeypatch.setattr(sweeper_module, "Sweep", StoppedSweep)
    monkeypatch.setattr(sweeper_module, "fail_interrupted", bookkeeping)
    monkeypatch.setattr(sweeper_module, "export_trials", lambda *args: tmp_path / "trials.csv")
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    settings = {"storage": "unused", "study_name": "s", "direction": "minimize", "sampler": None}
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as stop:
            sweeper_module.run_sweep(config, settings, None, [])
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == (signal.SIG_IGN,) * 2
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    assert stop.value.code == 130
    assert seen == {"term": signal.SIG_IGN, "int": signal.SIG_IGN}
