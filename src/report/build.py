"""Building the report (`build_report`) and its command line (`main`, run by `python -m src.report`)."""

from __future__ import annotations

import argparse
import html
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from src import analysis as A
from src.errors import print_error
from src.files import write_error
from src.formatting import number, plain_when_redirected
from src.report.render import Doc, md_text
from src.report.reportdir import OUTPUTS, ReportDir, ReportDirError, report_name
from src.report.tables import comparisons_display, excluded_display, runs_display, summary_display

DESCRIPTION = "Comparison report: `python -m src.report [DIR]`."


def build_report(target, out_root: Path = OUTPUTS / "reports", name: str | None = None, progress: bool = True) -> Path:
    """Write the report of the runs under target; returns the report directory. Raises
    analysis.NoRunsError when there is no run."""
    target = Path(target)
    rd = ReportDir(Path(out_root) / (name or report_name(target)), target)
    runs = A.load_runs(target, progress=progress)
    out = rd.path
    rd.clear()
    ok = A.completed(runs)
    keys = A.group_keys(runs)
    summary = A.summarize(runs)
    comps = {m: A.paired_comparisons(runs, m) for m in A.VERDICT_METRICS}
    studies = A.optuna_studies(runs)
    sections = A.verdict(runs, summary, comps, studies)

    runs.drop(columns=["last_update"]).to_csv(rd.file("runs.csv"), index=False)
    summary.to_csv(rd.file("summary.csv"), index=False)
    all_comps = [t for t in comps.values() if not t.empty]
    (
        pd.concat(all_comps, ignore_index=True)
        if all_comps
        else pd.DataFrame(columns=["metric", "a", "b", "n", "diff", "p", "p_holm"])
    ).to_csv(rd.file("comparisons.csv"), index=False)

    doc = Doc()
    title = f"Report: {target.resolve()}"
    doc.raw(f"<h1>{html.escape('Sweep report')}</h1>", "# Sweep report\n")
    doc.p(
        f"Source: {target.resolve()} · generated {time.strftime('%Y-%m-%d %H:%M')} by python -m src.report · "
        f"{len(runs)} runs, {len(ok)} completed",
        cls="meta",
    )
    counts = A.status_counts(runs)
    doc.raw(
        '<p class="status">'
        + "".join(f'<span class="{html.escape(s.split()[0])}">{html.escape(s)}: {n}</span>' for s, n in counts.items())
        + "</p>",
        "Status: " + ", ".join(f"{md_text(s)} {n}" for s, n in counts.items()) + "\n",
    )
    doc.h(2, "Verdict")
    doc.verdict(sections)

    for i, study in enumerate(studies):  # a search's own result comes before any table of test numbers
        _optuna_section(doc, rd, study, tag=f"_{i + 1}" if len(studies) > 1 else "")

    ex = excluded_display(runs)
    doc.h(2, f"Excluded runs ({len(ex)})")
    if ex.empty:
        doc.p("Every run completed; none excluded.")
    else:
        doc.p("Not completed, so left out of every mean, interval and test (listed, never dropped silently).")
        doc.table(ex)

    doc.h(2, "Summary over seeds")
    doc.p(
        "Mean ± 95% t-interval half-width (n = completed runs with the metric). NLL in nats, lower is better; "
        "ACC/NMI/ARI higher is better. Full numbers (std, CI bounds) in summary.csv."
    )
    doc.table(summary_display(summary, keys))

    cd = comparisons_display(comps, keys)
    doc.h(2, "Paired comparisons between models")
    doc.p(
        "Same setting, same seeds, each model at its own weight (β, λ) when it has one there: difference a − b, "
        "paired t-test, Holm-adjusted within each metric (comparisons.csv)."
    )
    doc.table(cd)

    doc.h(2, "Figures")
    figs = [
        (
            "nll_vs_k.png",
            lambda: A.plot_metric_vs_k(runs, ("test_nll",), summary),
            "Test NLL vs K per model: mean over seeds, band = 95% t-interval (error bar at a single K), "
            "dots = single runs.",
        ),
        (
            "clustering_vs_k.png",
            lambda: A.plot_clustering_vs_k(runs, summary),
            "Clustering ACC and NMI vs K (K > 1): mean over seeds, band = 95% t-interval, dots = single runs.",
        ),
        (
            "rate_distortion.png",
            lambda: A.plot_rate_distortion(runs),
            "Test reconstruction vs test regulariser, one point per run, one panel per model (κ: the "
            "reconstruction target of runs under model.constraint=reconstruction).",
        ),
        (
            "val_curves.png",
            lambda: A.plot_val_curves(runs),
            "Validation reconstruction and loss per epoch by model (band = ±1 sd over seeds).",
        ),
        (
            "samples_best.png",
            lambda: A.plot_best_images(runs, "samples.png"),
            "Samples from the prior: best run of each model (selected by validation NLL).",
        ),
        (
            "latent_best.png",
            lambda: A.plot_best_images(runs, "latent_scatter.png"),
            "Latent space (PCA of test posterior means) of the best run of each model.",
        ),
        (
            "reconstructions_best.png",
            lambda: A.plot_best_images(runs, "reconstructions.png"),
            "Test reconstructions (original, reconstruction pairs) of the best run of each model.",
        ),
    ]
    _draw(doc, rd, figs)

    doc.h(2, f"All runs ({len(runs)})")
    doc.table(runs_display(runs), collapsed=f"Show the table of all {len(runs)} runs (also runs.csv)")
    files = [
        ("runs.csv", "every results.json key and config column per run"),
        ("summary.csv", "mean, std, 95% CI and n per configuration and metric"),
        ("comparisons.csv", "the paired model comparisons"),
        ("report.md", "this page in Markdown"),
    ]
    doc.raw(
        '<p class="meta">Files: '
        + "; ".join(f'<a href="{f}">{f}</a> ({html.escape(what)})' for f, what in files)
        + "</p>",
        "Files: " + "; ".join(f"[{f}]({f}) ({what})" for f, what in files) + "\n",
    )

    rd.file("index.html").write_text(doc.page(title), encoding="utf-8")
    rd.file("report.md").write_text(doc.markdown(), encoding="utf-8")
    return out


def _draw(doc: Doc, rd: ReportDir, figs) -> None:
    for file, make, caption in figs:
        try:
            fig = make()
            path = A.save(fig, rd.file(file)) if fig is not None else None
        except Exception as e:  # a figure must never take the report down
            doc.p(f"{file}: could not be drawn ({type(e).__name__}: {e}).")
            continue
        if path is not None:
            doc.figure(file, caption)


def _optuna_section(doc: Doc, rd: ReportDir, study: A.OptunaStudy, tag: str = "") -> None:
    t = study.trials
    n_done = int(t["value"].notna().sum())
    pruned = t[t["state"] == "PRUNED"]
    doc.h(2, "Optuna study" + (f" {study.name}" if study.name else "") + f" ({study.sweep_dir})")
    doc.p(
        f"{len(t)} trials ({n_done} completed, {len(pruned)} pruned, {len(t) - n_done - len(pruned)} failed), read "
        f"from the job directories; objective {study.objective}, direction {study.direction}. Pruned trials were "
        "stopped early by the study's pruner: they are counted here and never compared."
    )
    if not pruned.empty:
        doc.table(pruned[["number", "run"]].astype(object).map(number), collapsed=f"{len(pruned)} pruned trials")
    best = study.best
    if best is not None:
        doc.p(f"Best trial {int(best['number'])} (run {best['run']}): {study.objective} = {number(best['value'], 4)}.")
        doc.table(pd.DataFrame([{"parameter": p, "best value": number(best[p])} for p in study.params]))
    _draw(
        doc,
        rd,
        [
            (
                f"optuna_history{tag}.png",
                lambda: A.plot_optuna_history(study),
                "Optimisation history: objective per trial and best so far (failed and pruned trials marked apart).",
            ),
            (
                f"optuna_params{tag}.png",
                lambda: A.plot_optuna_params(study),
                "Objective vs each searched parameter (colour = trial number, star = best trial).",
            ),
        ],
    )
    _importances_section(doc, study)
    top = t.sort_values("value", ascending=study.direction == "minimize", na_position="last").head(10)
    doc.table(top.astype(object).map(number), collapsed=f"Best {len(top)} trials")


def _importances_section(doc: Doc, study: A.OptunaStudy) -> None:
    try:
        imp = A.param_importances(study)
    except Exception as e:  # a table must never take the report down
        doc.p(f"Parameter importances could not be computed ({type(e).__name__}: {e}).")
        return
    n_done = int(study.trials["value"].notna().sum())
    if imp.empty:
        doc.p(f"Parameter importances need at least 2 completed trials with every searched parameter ({n_done} here).")
        return
    doc.p(
        f"Parameter importances for {study.objective} over the {n_done} completed trials: Optuna's default "
        "evaluator (optuna.importance.get_param_importances: PED-ANOVA, which compares where the best trials' "
        "parameters lie with the whole search). Few trials make them rough."
    )
    doc.table(imp.assign(importance=imp["importance"].map(lambda v: f"{v:.3f}")))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m src.report", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "dir", nargs="?", help="a run, a sweep directory or outputs/ (default: newest sweep under outputs/multirun)"
    )
    ap.add_argument(
        "--out", default=str(OUTPUTS / "reports"), help="where report directories go (default outputs/reports)"
    )
    ap.add_argument("--name", help="report directory name (default: derived from DIR)")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)
    plain_when_redirected()
    if args.dir is None:
        target = A.newest_sweep(OUTPUTS)
        if target is None:
            print(
                f"error: no sweep under {OUTPUTS / 'multirun'}; pass a directory (a run, a sweep or outputs/)",
                file=sys.stderr,
            )
            return 1
        print(f"newest sweep: {target}", file=sys.stderr)
    else:
        target = Path(args.dir)
    try:
        out = build_report(target, Path(args.out), args.name, progress=not args.quiet)
    except A.NoRunsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ReportDirError as e:
        return print_error(e)
    except Exception as e:
        disk = write_error(e)  # disk full, quota, read-only --out: one line
        if disk is None:
            raise
        return print_error(disk)
    runs = pd.read_csv(out / "runs.csv")
    n_ok = int((runs["status"] == A.COMPLETED).sum())
    for _, r in runs[runs["status"] != A.COMPLETED].iterrows():  # one line per excluded run
        if r["status"] == "pruned":
            reason = f"stopped by the study's pruner after epoch {r.get('epochs_run')}"
        else:
            reason = " ".join(str(r["error"]).split()) if isinstance(r["error"], str) else "no error recorded"
        print(f"excluded: {r['run']} ({r['status']}): {reason}", file=sys.stderr)
    print(f"report: {out / 'index.html'}  ({len(runs)} runs, {n_ok} completed; also report.md, runs.csv, summary.csv)")
    if n_ok == 0:
        print("warning: no completed run, so the report has no statistics", file=sys.stderr)
    return 0
