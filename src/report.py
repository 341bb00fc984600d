"""Comparison report: `python -m src.report [DIR]`.

DIR is a run directory, a multirun / Optuna sweep directory or all of `outputs/` (default: the newest
sweep under outputs/multirun). Writes `outputs/reports/<name>/`:

    index.html   one self-contained page (inline CSS, images beside it with relative links)
    report.md    the same content in Markdown
    runs.csv     one row per run (config columns, every results.json key, status)
    summary.csv  grouped over seeds: mean, std, 95% CI (t), n per metric
    comparisons.csv  paired model comparisons on common seeds (t-test, Holm-adjusted p)
    *.png        seaborn figures

Loading and statistics live in src/analysis.py (shared with the notebooks in analysis/).
Exit status: 0 on success, 1 when DIR holds no runs or does not exist.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from src import analysis as A

OUTPUTS = Path("outputs")
MANIFEST = ".csrae_report"  # in every report dir: the files this command wrote there (the only ones it deletes)
#: What a run or sweep directory holds: the report never writes into (or inside) such a directory.
RUN_OR_SWEEP_MARKERS = ("results.json", ".hydra", "multirun.yaml", "optimization_results.yaml", "trials.csv",
                        ".optuna", ".submitit", "checkpoints", "metrics.csv", "run.log")


class ReportDirError(Exception):
    """The report directory cannot be used without touching files the report did not write."""


# --------------------------------------------------------------------------------------------------
# Which directory, which name


def report_name(target: Path, outputs: Path = OUTPUTS) -> str:
    """outputs/multirun/2026-01-02/10-11-12 → multirun_2026-01-02_10-11-12; outputs → all."""
    t = target.resolve()
    o = Path(outputs).resolve()
    if t == o:
        return "all"
    try:
        parts = t.relative_to(o).parts
    except ValueError:
        parts = t.parts[-2:]
    name = "_".join(parts) or "report"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


# --------------------------------------------------------------------------------------------------
# Tables for display


def _fmt(v, digits: int = 2) -> str:
    if v is None or v is pd.NA or (isinstance(v, (float, np.floating)) and not np.isfinite(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return str(v)


def _mean_ci(row: pd.Series, metric: str) -> str:
    n = row.get(f"{metric}_n", 0)
    if not n or pd.isna(n):
        return "–"
    d = A._digits(metric)
    s = _fmt(row[f"{metric}_mean"], d)
    if np.isfinite(row[f"{metric}_ci95"]):
        s += f" ± {_fmt(row[f'{metric}_ci95'], d)}"
    return s + f" (n={int(n)})"


DISPLAY_METRICS = [("test_nll", "test NLL"), ("val_nll", "val NLL"), ("test_recon", "test recon"),
                   ("acc", "ACC"), ("nmi", "NMI"), ("ari", "ARI"), ("n_clusters_used", "clusters used"),
                   ("fewlabel_lr_10", "few-label LR (10/class)"), ("fewlabel_comp_10", "few-label comp (10/class)"),
                   ("best_epoch", "best epoch")]


def summary_display(summary: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    out = pd.DataFrame()
    for k in keys:
        out[A.short_key(k) if k != "reg_weight" else "β/λ"] = summary[k].map(A._fmt_value)
    out["seeds"] = summary["seeds"]
    for m, label in DISPLAY_METRICS:
        if f"{m}_mean" in summary and summary[f"{m}_n"].fillna(0).sum() > 0:
            out[label] = [_mean_ci(r, m) for _, r in summary.iterrows()]
    return out


def comparisons_display(comps: dict, keys: Sequence[str]) -> pd.DataFrame:
    rows = []
    for metric, t in comps.items():
        d = A._digits(metric)
        for _, r in t.iterrows():
            ctx = A.config_label(r.to_dict(), [k for k in keys if k != "model"])
            rows.append({
                "metric": A.METRICS[metric].label, "setting": ctx, "a − b": f"{r['a']} − {r['b']}",
                "seeds": r["seeds"], "mean a": _fmt(r["mean_a"], d), "mean b": _fmt(r["mean_b"], d),
                "difference ± 95% CI": _fmt(r["diff"], d) + (f" ± {_fmt(r['diff_ci95'], d)}"
                                                             if np.isfinite(r["diff_ci95"]) else ""),
                "p": _fmt(r["p"], 3), "p (Holm)": _fmt(r["p_holm"], 3),
                "better": "–" if pd.isna(r["better"]) else r["better"],
                "significant": "yes" if r["significant"] else "no",
            })
    return pd.DataFrame(rows)


def excluded_display(runs: pd.DataFrame) -> pd.DataFrame:
    ex = A.excluded(runs)
    now = time.time()
    rows = []
    for _, r in ex.iterrows():
        note = r["error"] if isinstance(r["error"], str) else ""
        if r["status"] == "running" and pd.notna(r.get("last_update")):
            age = now - r["last_update"].timestamp()
            note = (f"last update {_age(age)} ago: still running, or killed without a chance to record it "
                    "(SIGKILL leaves status running)")
        rows.append({"run": r["run"], "status": r["status"], "model": A._fmt_value(r["model"]),
                     "prior": A._fmt_value(r["prior"]), "K": A._fmt_value(r["K"]), "seed": A._fmt_value(r["seed"]),
                     "overrides": r["overrides"] or "", "reason": note})
    return pd.DataFrame(rows)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


RESULT_COLUMNS = ["epochs_run", "best_epoch", "test_nll", "val_nll", "acc", "nmi", "ari", "n_clusters_used",
                  "train_seconds"]


def runs_display(runs: pd.DataFrame) -> pd.DataFrame:
    """The run table of the page: run, status, the settings that vary (model, prior, K always), seed,
    and the main results. runs.csv has every column."""
    config = [k for k in A.candidate_keys(runs) if k in ("model", "prior", "K") or k in A.varying_keys(runs)]
    out = runs[["run", "status"] + config + ["seed"]].astype(object).map(A._fmt_value)
    for c in RESULT_COLUMNS:
        out[c] = runs[c].map(lambda v: _fmt(v, 3) if isinstance(v, float) else A._fmt_value(v))
    return out


# --------------------------------------------------------------------------------------------------
# Rendering


def md_text(text) -> str:
    """Text from runs (errors, names, paths) made inert in Markdown: HTML escaped as in index.html."""
    return html.escape(str(text), quote=False)


def md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none)_\n"
    esc = lambda v: md_text(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False, name=None)]
    return "\n".join(lines) + "\n"


def html_table(df: pd.DataFrame, cls: str = "") -> str:
    if df.empty:
        return "<p><em>(none)</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False, name=None))
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff;box-shadow:0 0 12px rgba(0,0,0,.06)}
h1{font-size:1.55rem;margin:.2em 0 .1em} h2{font-size:1.2rem;margin-top:1.8em;border-bottom:2px solid #e4e7ec;padding-bottom:4px}
h3{font-size:1.0rem;margin:1.1em 0 .3em;color:#334}
.meta{color:#5b6475;font-size:.9rem;margin-bottom:1em} code{background:#f0f2f5;padding:1px 4px;border-radius:3px}
.verdict{background:#f3f7ff;border-left:4px solid #3b6fd8;padding:8px 18px 10px;margin:12px 0}
.verdict ul{margin:.2em 0 .6em;padding-left:1.2em} .verdict li{margin:.25em 0;line-height:1.4}
.status span{display:inline-block;margin-right:10px;padding:2px 10px;border-radius:12px;font-size:.88rem;background:#eef0f3}
.status .completed{background:#dff3e4;color:#14532d} .status .failed{background:#fde2e1;color:#7f1d1d}
.status .interrupted,.status .running{background:#fff3cd;color:#6b4f00}
.scroll{overflow-x:auto} table{border-collapse:collapse;font-size:.84rem;margin:6px 0 14px}
th,td{border:1px solid #dde1e7;padding:3px 8px;text-align:left;white-space:nowrap} th{background:#f0f2f5}
tbody tr:nth-child(even){background:#fafbfc}
figure{margin:14px 0 26px} figure img{max-width:100%;height:auto;border:1px solid #e4e7ec}
figcaption{color:#4a5263;font-size:.88rem;margin-top:4px}
details summary{cursor:pointer;font-weight:600;margin:8px 0}
"""


class Doc:
    """Collects the report once and renders it as HTML and Markdown (same content)."""

    def __init__(self):
        self.html: list[str] = []
        self.md: list[str] = []

    def h(self, level: int, text: str):
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")
        self.md.append("#" * level + " " + md_text(text) + "\n")

    def p(self, text: str, cls: str = ""):
        self.html.append(f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>")
        self.md.append(md_text(text) + "\n")

    def raw(self, html_text: str, markdown: str):
        self.html.append(html_text)
        self.md.append(markdown)

    def table(self, df: pd.DataFrame, collapsed: Optional[str] = None):
        t = html_table(df)
        self.html.append(f"<details><summary>{html.escape(collapsed)}</summary>{t}</details>" if collapsed else t)
        self.md.append(md_table(df))

    def figure(self, file: str, caption: str):
        self.html.append(f'<figure><img src="{html.escape(file)}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        self.md.append(f"![{md_text(caption)}]({file})\n\n_{md_text(caption)}_\n")

    def verdict(self, sections):
        parts = []
        for title, lines in sections:
            items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
            parts.append(f"<h3>{html.escape(title)}</h3><ul>{items}</ul>")
        self.html.append('<div class="verdict">' + "".join(parts) + "</div>")
        self.md.append(A.verdict_markdown([(md_text(t), [md_text(ln) for ln in lines]) for t, lines in sections]))


# --------------------------------------------------------------------------------------------------
# The report


def build_report(target, out_root: Path = OUTPUTS / "reports", name: Optional[str] = None,
                 progress: bool = True) -> Path:
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
    sections = A.verdict(runs, summary, comps)

    runs.drop(columns=["last_update"]).to_csv(rd.file("runs.csv"), index=False)
    summary.to_csv(rd.file("summary.csv"), index=False)
    all_comps = [t for t in comps.values() if not t.empty]
    (pd.concat(all_comps, ignore_index=True) if all_comps else pd.DataFrame(
        columns=["metric", "a", "b", "n", "diff", "p", "p_holm"])).to_csv(rd.file("comparisons.csv"), index=False)

    doc = Doc()
    title = f"Report: {target.resolve()}"
    doc.raw(f"<h1>{html.escape('Sweep report')}</h1>", "# Sweep report\n")
    doc.p(f"Source: {target.resolve()} · generated {time.strftime('%Y-%m-%d %H:%M')} by python -m src.report · "
          f"{len(runs)} runs, {len(ok)} completed", cls="meta")
    counts = A.status_counts(runs)
    doc.raw('<p class="status">' + "".join(f'<span class="{html.escape(s.split()[0])}">{html.escape(s)}: {n}</span>'
                                          for s, n in counts.items()) + "</p>",
            "Status: " + ", ".join(f"{md_text(s)} {n}" for s, n in counts.items()) + "\n")
    doc.h(2, "Verdict")
    doc.verdict(sections)

    ex = excluded_display(runs)
    doc.h(2, f"Excluded runs ({len(ex)})")
    if ex.empty:
        doc.p("Every run completed; none excluded.")
    else:
        doc.p("Not completed, so left out of every mean, interval and test (listed, never dropped silently).")
        doc.table(ex)

    doc.h(2, "Summary over seeds")
    doc.p("Mean ± 95% t-interval half-width (n = completed runs with the metric). NLL in nats, lower is better; "
          "ACC/NMI/ARI higher is better. Full numbers (std, CI bounds) in summary.csv.")
    doc.table(summary_display(summary, keys))

    cd = comparisons_display(comps, keys)
    doc.h(2, "Paired comparisons between models")
    doc.p("Same setting, same seeds: difference a − b, paired t-test, Holm-adjusted within each metric "
          "(comparisons.csv).")
    doc.table(cd)

    doc.h(2, "Figures")
    figs = [
        ("nll_vs_k.png", lambda: A.plot_metric_vs_k(runs, ("test_nll",), summary),
         "Test NLL vs K per model: mean over seeds, band = 95% t-interval (error bar at a single K), "
         "dots = single runs."),
        ("clustering_vs_k.png", lambda: A.plot_clustering_vs_k(runs, summary),
         "Clustering ACC and NMI vs K (K > 1): mean over seeds, band = 95% t-interval, dots = single runs."),
        ("rate_distortion.png", lambda: A.plot_rate_distortion(runs),
         "Test reconstruction vs test regulariser, one point per run, one panel per model (κ: the "
         "reconstruction target of runs under model.constraint=reconstruction)."),
        ("val_curves.png", lambda: A.plot_val_curves(runs),
         "Validation reconstruction and loss per epoch by model (band = ±1 sd over seeds)."),
        ("samples_best.png", lambda: A.plot_best_images(runs, "samples.png"),
         "Samples from the prior: best run of each model (selected by validation NLL)."),
        ("latent_best.png", lambda: A.plot_best_images(runs, "latent_scatter.png"),
         "Latent space (PCA of test posterior means) of the best run of each model."),
        ("reconstructions_best.png", lambda: A.plot_best_images(runs, "reconstructions.png"),
         "Test reconstructions (original, reconstruction pairs) of the best run of each model."),
    ]
    _draw(doc, rd, figs)

    studies = A.optuna_studies(runs)
    for i, study in enumerate(studies):
        _optuna_section(doc, rd, study, tag=f"_{i + 1}" if len(studies) > 1 else "")

    doc.h(2, f"All runs ({len(runs)})")
    doc.table(runs_display(runs), collapsed=f"Show the table of all {len(runs)} runs (also runs.csv)")
    files = [("runs.csv", "every results.json key and config column per run"),
             ("summary.csv", "mean, std, 95% CI and n per configuration and metric"),
             ("comparisons.csv", "the paired model comparisons"), ("report.md", "this page in Markdown")]
    doc.raw('<p class="meta">Files: ' + "; ".join(f'<a href="{f}">{f}</a> ({html.escape(what)})' for f, what in files)
            + "</p>", "Files: " + "; ".join(f"[{f}]({f}) ({what})" for f, what in files) + "\n")

    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>"
            + "\n".join(doc.html) + "</main></body></html>\n")
    rd.file("index.html").write_text(page, encoding="utf-8")
    rd.file("report.md").write_text("\n".join(doc.md), encoding="utf-8")
    return out


class ReportDir:
    """The report directory and its manifest (MANIFEST, JSON): every file the report writes is
    recorded there before it is written, and a rerun deletes only the files of that list.

    Refused (ReportDirError): a directory that holds a run or a sweep, one inside a run, and an existing
    non-empty directory without a manifest (its files are someone else's).
    """

    def __init__(self, path: Path, source: Path):
        self.path = Path(path)
        self.source = str(Path(source).resolve())
        self.files: list[str] = []
        self._check()

    def _check(self) -> None:
        p = self.path
        held = [m for m in RUN_OR_SWEEP_MARKERS if (p / m).exists()] if p.is_dir() else []
        if p.is_dir() and not held:
            held = [c.name + "/" for c in p.iterdir() if c.is_dir() and A.is_run_dir(c)][:1]
        if held:
            raise ReportDirError(f"{p} holds a run or a sweep ({held[0]}); the report will not write there: "
                                 "choose another --out/--name (default outputs/reports/<name>)")
        run = next((a for a in p.resolve().parents if A.is_run_dir(a)), None)
        if run is not None:
            raise ReportDirError(f"{p} is inside the run directory {run}; choose another --out/--name")
        if p.exists() and not p.is_dir():
            raise ReportDirError(f"{p} exists and is not a directory; choose another --out/--name")
        if p.is_dir() and not (p / MANIFEST).is_file() and any(p.iterdir()):
            raise ReportDirError(f"{p} is not empty and was not written by python -m src.report (no {MANIFEST}); "
                                 "choose another --out/--name")

    def _old_files(self) -> list[str]:
        try:
            old = json.loads((self.path / MANIFEST).read_text()).get("files", [])
        except (OSError, ValueError, AttributeError):  # a marker of an older version: no list, delete nothing
            return []
        return [f for f in old if isinstance(f, str) and f == Path(f).name and f != MANIFEST]

    def clear(self) -> None:
        """Create the directory; delete the files the previous report listed in its manifest."""
        self.path.mkdir(parents=True, exist_ok=True)
        for f in self._old_files():
            target = self.path / f
            if target.is_file() and not target.is_symlink():
                target.unlink()
        self._save()

    def file(self, name: str) -> Path:
        """The path to write name to, recorded in the manifest first."""
        if name not in self.files:
            self.files.append(name)
            self._save()
        return self.path / name

    def _save(self) -> None:
        tmp = self.path / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps({"written_by": "python -m src.report", "source": self.source,
                                   "files": self.files}, indent=1))
        os.replace(tmp, self.path / MANIFEST)


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
    doc.h(2, "Optuna study" + (f" {study.name}" if study.name else "") + f" ({study.sweep_dir})")
    doc.p(f"{len(t)} trials ({n_done} completed, {len(t) - n_done} failed), read from the job directories; "
          f"objective {study.objective}, direction {study.direction}.")
    best = study.best
    if best is not None:
        doc.p(f"Best trial {int(best['number'])} (run {best['run']}): {study.objective} = {_fmt(best['value'], 4)}.")
        doc.table(pd.DataFrame([{"parameter": p, "best value": A._fmt_value(best[p])} for p in study.params]))
    _draw(doc, rd, [
        (f"optuna_history{tag}.png", lambda: A.plot_optuna_history(study),
         "Optimisation history: objective per trial and best so far (failed trials marked ×)."),
        (f"optuna_params{tag}.png", lambda: A.plot_optuna_params(study),
         "Objective vs each searched parameter (colour = trial number, star = best trial)."),
    ])
    _importances_section(doc, study)
    top = t.sort_values("value", ascending=study.direction == "minimize", na_position="last").head(10)
    doc.table(top.astype(object).map(A._fmt_value),
              collapsed=f"Best {len(top)} trials")


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
    doc.p(f"Parameter importances for {study.objective} over the {n_done} completed trials: evaluator "
          f"{A.IMPORTANCE_EVALUATOR.rsplit('.', 1)[-1]} (optuna.importance, a random forest, seed 0; "
          "fANOVA, optuna 2.10's default, fails with the current scikit-learn). Few trials make them rough.")
    doc.table(imp.assign(importance=imp["importance"].map(lambda v: f"{v:.3f}")))


# --------------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m src.report", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", help="a run, a sweep directory or outputs/ (default: newest sweep under "
                                           "outputs/multirun)")
    ap.add_argument("--out", default=str(OUTPUTS / "reports"), help="where report directories go "
                                                                     "(default outputs/reports)")
    ap.add_argument("--name", help="report directory name (default: derived from DIR)")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    args = ap.parse_args(argv)
    if args.dir is None:
        target = A.newest_sweep(OUTPUTS)
        if target is None:
            print(f"error: no sweep under {OUTPUTS / 'multirun'}; pass a directory "
                  "(a run, a sweep or outputs/)", file=sys.stderr)
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
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs = pd.read_csv(out / "runs.csv")
    n_ok = int((runs["status"] == A.COMPLETED).sum())
    for _, r in runs[runs["status"] != A.COMPLETED].iterrows():  # one line per excluded run
        reason = " ".join(str(r["error"]).split()) if isinstance(r["error"], str) else "no error recorded"
        print(f"excluded: {r['run']} ({r['status']}): {reason}", file=sys.stderr)
    print(f"report: {out / 'index.html'}  ({len(runs)} runs, {n_ok} completed; also report.md, runs.csv, "
          f"summary.csv)")
    if n_ok == 0:
        print("warning: no completed run, so the report has no statistics", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
