"""The comparison report and the notebooks, on a real small sweep.

One session fixture trains 2 models × 2 values of K × 2 seeds on digits (1 epoch, tiny evaluation,
one thread) with `python -m src.run -m`, plus one run that fails, and a 3-trial Optuna sweep. The
report is made with the real command line (`python -m src.report`), and checked against the runs'
own results.json, against a direct pandas/scipy computation, for its links and images, by running
every notebook in analysis/, and by taking a screenshot of index.html in a real headless Chromium.
"""

from __future__ import annotations

import html.parser
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli import REPO, subprocess_env
from scipy import stats

from src import analysis as A
from src.contract import CONFIG_COLUMNS, RESULT_KEYS

NOTEBOOKS = sorted((REPO / "analysis").glob("*.py"))
TINY = ["trainer.epochs=1", "trainer.threads=1", "trainer.device=cpu", "trainer.progress=false", "eval.is_samples=10"]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def _run(*args: str, check: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


# --------------------------------------------------------------------------------------------------
# Fixtures: real runs, real reports


@pytest.fixture(scope="session")
def sweep(tmp_path_factory) -> Path:
    """8 completed jobs (vae, csrae × K=2,3 × seeds 0,1) and one failed run (optimizer.lr=-1)."""
    d = tmp_path_factory.mktemp("report") / "sweep"
    _run("-m", "src.run", "-m", "model=vae,csrae", "prior.K=2,3", "trainer.seed=0,1", *TINY, f"hydra.sweep.dir={d}")
    failed = _run(
        "-m",
        "src.run",
        "model=csrae",
        "prior.K=3",
        "trainer.seed=0",
        "optimizer.lr=-1",
        *TINY,
        f"hydra.run.dir={d / 'failed_lr'}",
        check=False,
    )
    assert failed.returncode != 0
    assert json.loads((d / "failed_lr" / "results.json").read_text())["status"] == "failed"
    return d


@pytest.fixture(scope="session")
def report(sweep, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reports")
    p = _run("-m", "src.report", str(sweep), "--out", str(out), "--name", "grid")
    assert "9 runs, 8 completed" in p.stdout
    return out / "grid"


@pytest.fixture(scope="session")
def optuna_sweep(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("optuna")
    _run(
        "-m",
        "src.run",
        "-m",
        "sweep=csrae_optuna",
        "hydra.sweeper.n_trials=3",
        *TINY,
        f"hydra.sweeper.storage=sqlite:///{d / 'study.db'}",
        f"hydra.sweep.dir={d / 'sweep'}",
    )
    return d / "sweep"


def _results(sweep: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(sweep)): json.loads(p.read_text()) for p in sweep.glob("*/results.json")}


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)  # float64 values come back exactly (checked by the equality tests)


# --------------------------------------------------------------------------------------------------
# The tables


def _same(cell, expected) -> bool:
    if expected is None:
        return cell is None or (isinstance(cell, float) and math.isnan(cell))
    if isinstance(expected, bool):
        return cell in (expected, str(expected))
    if isinstance(expected, (int, float)):
        return float(cell) == float(expected)  # exact: the CSV round-trips float64
    if isinstance(expected, list):
        return cell == " ".join(map(str, expected))
    if isinstance(expected, dict):
        return json.loads(cell) == expected
    return str(cell) == str(expected)


def test_runs_csv_matches_every_results_json_exactly(sweep, report):
    runs = _csv(report / "runs.csv")
    results = _results(sweep)
    assert sorted(runs["run"].astype(str)) == sorted(results)
    for _, row in runs.iterrows():
        res = results[str(row["run"])]
        for key, expected in res.items():
            if key == "run_dir":
                assert Path(row["run_dir"]) == Path(expected).resolve()
            else:
                assert _same(row[key], expected), (row["run"], key, row[key], expected)
    assert dict(runs["status"].value_counts()) == {"completed": 8, "failed": 1}


def test_summary_matches_a_direct_pandas_computation(report):
    runs = _csv(report / "runs.csv")
    summary = _csv(report / "summary.csv")
    ok = runs[runs["status"] == "completed"]
    assert list(summary.columns[:2]) == ["model", "K"]
    assert len(summary) == 4 and (summary["n_runs"] == 2).all()  # the failed run is in no group
    for metric in ["test_nll", "val_nll", "acc", "nmi", "ari"]:
        g = ok.groupby(["model", "K"])[metric]
        expected = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()}).reset_index()
        expected["ci95"] = stats.t.ppf(0.975, expected["n"] - 1) * expected["std"] / np.sqrt(expected["n"])
        got = summary.merge(expected, on=["model", "K"])
        assert len(got) == 4
        for s in ("mean", "std", "ci95"):
            np.testing.assert_allclose(got[f"{metric}_{s}"], got[s], rtol=1e-12, atol=1e-12, err_msg=metric)
        np.testing.assert_array_equal(got[f"{metric}_n"], got["n"])
        np.testing.assert_allclose(got[f"{metric}_ci_low"], got["mean"] - got["ci95"], rtol=1e-12)


def test_paired_comparisons_match_scipy_and_holm(report):
    runs = _csv(report / "runs.csv")
    comps = _csv(report / "comparisons.csv")
    ok = runs[runs["status"] == "completed"]
    for metric in A.VERDICT_METRICS:
        c = comps[comps["metric"] == metric].sort_values("K")
        assert list(c["K"]) == [2, 3] and (c["n"] == 2).all()
        pvals = []
        for _, r in c.iterrows():
            a = ok[(ok["model"] == r["a"]) & (ok["K"] == r["K"])].set_index("seed")[metric].sort_index()
            b = ok[(ok["model"] == r["b"]) & (ok["K"] == r["K"])].set_index("seed")[metric].sort_index()
            assert r["diff"] == pytest.approx((a - b).mean(), abs=1e-12)
            d = (a - b).to_numpy()
            p = stats.ttest_rel(a, b).pvalue if d.std() > 0 else (1.0 if d.mean() == 0 else 0.0)
            assert r["p"] == pytest.approx(p, abs=1e-12), metric
            pvals.append(p)
        lo, hi = sorted(pvals)
        holm = {lo: min(1, 2 * lo), hi: min(1, max(2 * lo, hi))}
        np.testing.assert_allclose(c["p_holm"], [holm[p] for p in pvals], atol=1e-12)


def test_models_are_compared_at_their_own_weights():
    """A tuned pair (vae at β = 1, csrae at its λ, same seeds) is compared: each model's reg_weight is its
    own knob, not part of the setting. A grid over weights is compared only at equal weights."""
    from src.report.tables import comparisons_display

    rng = np.random.default_rng(0)
    rows = []
    for model, weight in (("vae", 1.0), ("csrae", 2.63)):  # the tuned pair: gmm K=10, seeds 0-2
        rows += [dict(model=model, prior="gmm", K=10, reg_weight=weight, seed=s) for s in range(3)]
    for model in ("vae", "csrae"):  # a grid: vamp K=5, both models at both weights
        rows += [dict(model=model, prior="vamp", K=5, reg_weight=w, seed=s) for w in (0.5, 2.0) for s in range(2)]
    runs = pd.DataFrame(rows).assign(run=lambda d: [f"r{i}" for i in range(len(d))], status=A.COMPLETED)
    runs = runs.reindex(columns=list(dict.fromkeys([*runs, *CONFIG_COLUMNS, *RESULT_KEYS])))  # as load_runs has them
    runs["test_nll"] = 90 + rng.normal(size=len(runs)) + np.where(runs["model"] == "csrae", 1.0, 0.0)

    c = A.paired_comparisons(runs, "test_nll")
    tuned = c[c["prior"] == "gmm"]
    assert len(tuned) == 1
    (t,) = tuned.to_dict("records")
    assert (t["a"], t["weight_a"], t["b"], t["weight_b"], t["n"]) == ("csrae", 2.63, "vae", 1.0, 3)
    assert math.isnan(t["reg_weight"])
    a, b = (
        runs[(runs["prior"] == "gmm") & (runs["model"] == m)].set_index("seed")["test_nll"] for m in ("csrae", "vae")
    )
    assert t["diff"] == pytest.approx((a - b).mean(), abs=1e-12)
    assert t["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue, abs=1e-12)
    grid = c[c["prior"] == "vamp"].sort_values("reg_weight")
    assert list(grid["reg_weight"]) == [0.5, 2.0]
    assert (grid["weight_a"] == grid["reg_weight"]).all() and (grid["weight_b"] == grid["reg_weight"]).all()
    assert (grid["n"] == 2).all()

    keys = A.group_keys(runs)
    shown = comparisons_display({"test_nll": c}, keys)
    assert "csrae (λ=2.63) − vae (β=1)" in set(shown["a − b"])
    assert "gmm, K=10" in set(shown["setting"])
    sentence = A.describe_comparison(tuned.iloc[0], "test_nll", keys)
    assert sentence.startswith("gmm, K=10: ") and "csrae (λ=2.63)" in sentence and "vae (β=1)" in sentence

    # Their validation curves share one panel, titled with each model's weight (a grid gets a panel per weight).
    curves = pd.concat([runs.assign(epoch=e, val_recon=60.0 + e, val_loss=90.0 - e) for e in (1, 2, 3)])
    fig = A.plot_val_curves(runs, curves)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["gmm, K=10\ncsrae λ=2.63, vae β=1", "vamp, K=5, β/λ=0.5", "vamp, K=5, β/λ=2"], titles

    # The verdict's best-vs-runner-up line defers to that row instead of testing the pair again.
    pair = runs[runs["prior"] == "gmm"]
    (lines,) = [lines for title, lines in A.verdict(pair) if title == "Test NLL"]
    assert lines[0].endswith("(compared below).") and "not corrected" not in lines[0]
    assert "csrae (λ=2.63)" in lines[1]

    # The pairing follows the design, not what finished: a grid whose vae ran only at 0.5 and csrae only
    # at 2.0 (the others failed) has no pair at equal weights, and no cross-weight pair either.
    gaps = runs.copy()
    failed = (gaps["prior"] == "vamp") & (gaps["reg_weight"] == gaps["model"].map({"vae": 2.0, "csrae": 0.5}))
    gaps.loc[failed, "status"] = "failed"
    assert A.paired_comparisons(gaps, "test_nll").query("prior == 'vamp'").empty
    assert len(A.paired_comparisons(gaps, "test_nll").query("prior == 'gmm'")) == 1


def test_entries_the_prior_fixes_do_not_name_groups():
    """vae + standard beside csrae + gmm: the gmm prior's init and train vary only with the prior, so they
    add nothing to its labels; an entry that varies within one model and prior (a searched width) does."""
    rows = [dict(model="vae", prior="standard", K=1, seed=s, init="random", width=w) for s in (0, 1) for w in (64, 128)]
    rows += [dict(model="csrae", prior="gmm", K=10, seed=s, init="kmeans", width=64) for s in (0, 1)]
    runs = pd.DataFrame(rows).rename(columns={"init": "cfg.prior.init", "width": "cfg.model.hidden"})
    runs = runs.assign(run=[f"r{i}" for i in range(len(runs))], status=A.COMPLETED, test_nll=90.0)
    assert A.group_keys(runs) == ["model", "prior", "K", "cfg.model.hidden"]
    assert len(A.summarize(runs)) == 3


def test_statistics_helpers():
    s = A.mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["std"] == 1.0
    assert s["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) / math.sqrt(3))
    assert math.isnan(A.mean_ci([5.0])["ci95"])
    np.testing.assert_allclose(A.holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])


# --------------------------------------------------------------------------------------------------
# The report's files


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


def test_report_holds_every_file_it_links(report):
    parser = _Links()
    parser.feed((report / "index.html").read_text())
    md_links = re.findall(r"\]\(([^)\s]+)\)", (report / "report.md").read_text())
    pngs = {"nll_vs_k.png", "clustering_vs_k.png", "val_curves.png", "samples_best.png", "latent_best.png"}
    for links in (parser.links, md_links):
        assert pngs <= set(links)
        for link in links:
            assert "://" not in link and not link.startswith("/"), link  # relative: opens offline, anywhere
            assert (report / link).is_file(), link
    for f in ("index.html", "report.md", "runs.csv", "summary.csv", "comparisons.csv"):
        assert (report / f).is_file()


def test_every_png_is_a_real_image(report):
    from PIL import Image

    pngs = sorted(report.glob("*.png"))
    assert len(pngs) >= 5
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.width >= 300 and im.height >= 200, p.name
            assert np.asarray(im.convert("L")).std() > 5, f"{p.name} is blank"


def test_verdict_and_failed_run_in_the_report(report):
    md = (report / "report.md").read_text()
    page = (report / "index.html").read_text()
    for text in (md, page):
        assert "9 runs: 8 completed, 1 failed" in text
        assert "failed_lr" in text and "ConfigError" in text  # listed with its reason
        assert "csrae" in text and "vae" in text and "2 seeds" in text
    verdict = md.split("## Verdict")[1].split("## Excluded")[0]
    assert "Test NLL" in verdict and "Caveats" in verdict
    assert re.search(r"K=2: (vae|csrae) (beats|is ahead of) (vae|csrae) on test NLL by [\d.]+ ± [\d.]+ nats", verdict)


def test_optuna_report(optuna_sweep, tmp_path):
    _run("-m", "src.report", str(optuna_sweep), "--out", str(tmp_path), "--name", "opt")
    md = (tmp_path / "opt" / "report.md").read_text()
    # The search's verdict: its best trial by its own (validation) objective, then that trial's test
    # numbers; no configuration ranked by a test metric; the study section before any table.
    results = _results(optuna_sweep)
    job, best = min(results.items(), key=lambda kv: kv[1]["val_nll"])
    verdict = md.split("## Verdict")[1].split("\n## ")[0]
    sections = re.findall(r"\*\*(.+?)\*\*", verdict)
    assert sections[:2] == ["Runs", "Optuna study csrae_optuna"]
    study = verdict.split("**Optuna study csrae_optuna**")[1].split("\n**")[0]
    assert f"Best trial by val_nll: trial {best['trial']} (run {job}) with {best['val_nll']:.2f} nats" in study
    assert f"Its test numbers: test NLL {best['test_nll']:.2f} ± {best['test_nll_sem']:.2f} nats" in study
    assert best["acc"] is None or f"clustering ACC {best['acc']:.3f}" in study  # K = 1 has no clustering
    assert "Best test NLL" not in verdict and "Best clustering ACC" not in verdict
    assert md.index("## Optuna study") < md.index("## Excluded runs") < md.index("## Summary over seeds")
    assert "## Optuna study csrae_optuna" in md and "3 trials (3 completed, 0 pruned, 0 failed)" in md
    for png in ("optuna_history.png", "optuna_params.png"):
        assert f"]({png})" in md and (tmp_path / "opt" / png).is_file()
    study = A.optuna_studies(A.load_runs(optuna_sweep, progress=False))[0]
    assert sorted(study.trials["number"]) == [0, 1, 2] and study.objective == "val_nll"
    assert set(study.params) == {"prior.K", "model.reg_weight", "model.latent_dim", "optimizer.lr"}
    assert {"model.reg_weight", "optimizer.lr"} <= study.log_params
    assert "PED-ANOVA" in md and "Parameter importances for val_nll" in md


def test_parameter_importances_match_optunas_on_the_stored_study(optuna_sweep):
    """The report's importances (from the job dirs) equal optuna's own on the study in its storage."""
    import optuna
    from optuna.importance import get_param_importances

    study = A.optuna_studies(A.load_runs(optuna_sweep, progress=False))[0]
    ours = A.param_importances(study)
    assert set(ours["parameter"]) == set(study.params) and ours["importance"].sum() == pytest.approx(1.0)
    stored = optuna.load_study(study_name="csrae_optuna", storage=f"sqlite:///{optuna_sweep.parent / 'study.db'}")
    theirs = get_param_importances(stored)
    assert dict(zip(ours["parameter"], ours["importance"])) == pytest.approx(dict(theirs))
    assert list(ours["parameter"]) == list(theirs)  # sorted, most important first


# --------------------------------------------------------------------------------------------------
# Bad input: clear messages, no crash


@pytest.mark.parametrize("kind", ["empty", "missing"])
def test_no_runs_is_a_clear_error(tmp_path, kind):
    target = tmp_path / "nothing here"
    if kind == "empty":
        (target / "sub").mkdir(parents=True)
    p = _run("-m", "src.report", str(target), "--out", str(tmp_path / "reports"), check=False)
    assert p.returncode == 1
    assert "error:" in p.stderr and ("no runs" in p.stderr or "does not exist" in p.stderr)
    assert "Traceback" not in p.stderr + p.stdout


def test_broken_runs_are_listed_and_never_crash(sweep, tmp_path):
    from src.report import build_report

    d = tmp_path / "mixed"
    shutil.copytree(sweep, d, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copytree(d / "0", d / "interrupted")
    res = json.loads((d / "interrupted" / "results.json").read_text())
    (d / "interrupted" / "results.json").write_text(json.dumps({**res, "status": "interrupted", "test_nll": 1.0}))
    (d / "1" / "results.json").write_text("{not json")  # unreadable
    (d / "2" / "results.json").unlink()  # killed before writing it
    json_killed = {**res, "status": "running", "test_nll": None}
    (d / "3" / "results.json").write_text(json.dumps(json_killed))  # SIGKILL leaves "running"
    out = build_report(d, tmp_path / "reports", "mixed", progress=False)
    runs = _csv(out / "runs.csv")
    status = dict(zip(runs["run"].astype(str), runs["status"]))
    assert status["interrupted"] == "interrupted" and status["1"] == "unreadable"
    assert status["2"] == "no results.json" and status["3"] == "running" and status["failed_lr"] == "failed"
    summary = _csv(out / "summary.csv")
    assert summary["n_runs"].sum() == 5  # jobs 0, 4, 5, 6, 7 are still completed
    assert summary["test_nll_mean"].min() > 1.0  # the interrupted run's value is not used
    md = (out / "report.md").read_text()
    assert "## Excluded runs (5)" in md


# --------------------------------------------------------------------------------------------------
# Notebooks and the browser


@pytest.mark.parametrize("notebook", [p.name for p in NOTEBOOKS])
def test_notebook_runs_headless(notebook, sweep, optuna_sweep, tmp_path):
    target = optuna_sweep if notebook == "optuna_study.py" else sweep
    p = _run(f"analysis/{notebook}", "--sweep-dir", str(target), "--out", str(tmp_path))
    assert "Traceback" not in p.stderr
    assert list(tmp_path.glob("*.png")), p.stdout


def test_notebooks_are_percent_format():
    import jupytext

    assert {p.name for p in NOTEBOOKS} >= {"vae_vs_csrae.py", "effect_of_k.py", "optuna_study.py"}
    for p in NOTEBOOKS:
        nb = jupytext.read(p)
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), p.name
        assert sum(c.cell_type == "code" for c in nb.cells) >= 3


def test_html_renders_in_headless_chromium(report, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed in CI: .ci/install_chromium.sh should have installed it")
        print("chromium not found (install: bash .ci/install_chromium.sh); skipping the screenshot check")
        pytest.skip("chromium not installed (outside CI); run bash .ci/install_chromium.sh")
    shot = tmp_path / "shot.png"
    p = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,900",
            f"--screenshot={shot}",
            (report / "index.html").resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), f"no screenshot (exit {p.returncode}): {p.stderr[-2000:]}"
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1200, 900)
        grey = np.asarray(im.convert("L"), dtype=float)
    assert grey.std() > 10, "blank screenshot"
    assert (grey < 128).mean() > 0.005, "no dark pixels: no text was rendered"
