"""Comparison report: `python -m src.report [DIR]`.

DIR is a run directory, a multirun / Optuna sweep directory or all of `outputs/` (default: the newest
sweep under outputs/multirun). Writes `outputs/reports/<name>/`:

    index.html   one self-contained page (inline CSS, images beside it with relative links)
    report.md    the same content in Markdown
    runs.csv     one row per run (config columns, every results.json key, status)
    summary.csv  grouped over seeds: mean, std, 95% CI (t), n per metric
    comparisons.csv  paired model comparisons on common seeds (t-test, Holm-adjusted p)
    *.png        seaborn figures

Loading and statistics live in src/analysis/ (shared with the notebooks in analysis/). Modules: build
(build_report, main), tables (the display tables), render (HTML and Markdown), reportdir (the report
directory and its manifest).
Exit status: 0 on success, 1 when DIR holds no runs or does not exist, 2 when the report directory
holds files the report did not write (or a run).
"""

from __future__ import annotations

from src.report.build import build_report, main
from src.report.reportdir import ReportDir, ReportDirError, report_name

__all__ = ["ReportDir", "ReportDirError", "build_report", "main", "report_name"]
