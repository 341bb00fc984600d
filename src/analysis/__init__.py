"""Loading and aggregating run outputs: the one implementation behind `src.report` and `analysis/`.

Reads only files (docs/CONTRACT.md): each run directory's `results.json`, `.hydra/config.yaml`,
`metrics.csv` and images (Optuna trials too: results.json carries `trial` and `params`, and the job's
`.hydra/hydra.yaml` the sweeper's direction and search space). Nothing here imports torch (nor optuna,
until parameter importances are asked for), so notebooks and the report start fast.

Statistics are over completed runs only. Failed, interrupted, still-running (or SIGKILLed) and
unreadable runs stay in the run table with their status and are excluded from every mean, CI and test.

Main entry points (all importable from here, `from src import analysis as A`):
    load_runs(path)               -> one row per run (config columns, every result key, status, ...)
    summarize(runs)               -> grouped over seeds: mean, std, 95% CI (t), n per metric
    paired_comparisons(runs, m)   -> model vs model on the same seeds: paired t-test per setting (each
                                     model at its own weight when it has one there)
    verdict(runs, ...)            -> sentences written from the data
    optuna_studies(runs)          -> the Optuna sweeps among the runs, one trials table each
    param_importances(study)      -> each searched parameter's importance for the objective
    plot_* functions              -> seaborn figures (each returns a matplotlib Figure)

Modules: vocabulary (statuses, metrics, digits), loading (run directories into a table), grouping
(grouping keys and labels), stats (means, CIs, paired tests), verdict (the sentences), studies
(per-epoch curves, Optuna), figures (seaborn), notebook (helpers for the notebooks in analysis/).
"""

from __future__ import annotations

from src.analysis.figures import (
    plot_best_images,
    plot_clustering_vs_k,
    plot_metric_vs_k,
    plot_optuna_history,
    plot_optuna_params,
    plot_rate_distortion,
    plot_val_curves,
    save,
)
from src.analysis.grouping import (
    candidate_keys,
    config_label,
    group_keys,
    key_groups,
    model_settings,
    setting_label,
    short_key,
    side_labels,
    varying_keys,
)
from src.analysis.loading import (
    NoRunsError,
    completed,
    excluded,
    find_run_dirs,
    is_run_dir,
    load_run,
    load_runs,
    newest_sweep,
    status_counts,
)
from src.analysis.notebook import notebook_params, show
from src.analysis.stats import best_configs, best_run, holm, mean_ci, paired_comparisons, paired_test, summarize
from src.analysis.studies import OptunaStudy, load_curves, load_optuna, optuna_studies, param_importances
from src.analysis.verdict import caveats, describe_comparison, verdict, verdict_markdown
from src.analysis.vocabulary import (
    COMPLETED,
    INVALID,
    METRICS,
    SUMMARY_METRICS,
    VERDICT_METRICS,
    Metric,
    metric_digits,
    metric_info,
)

__all__ = [
    "COMPLETED",
    "INVALID",
    "METRICS",
    "SUMMARY_METRICS",
    "VERDICT_METRICS",
    "Metric",
    "NoRunsError",
    "OptunaStudy",
    "best_configs",
    "best_run",
    "candidate_keys",
    "caveats",
    "completed",
    "config_label",
    "describe_comparison",
    "excluded",
    "find_run_dirs",
    "group_keys",
    "key_groups",
    "holm",
    "is_run_dir",
    "load_curves",
    "load_optuna",
    "load_run",
    "load_runs",
    "mean_ci",
    "metric_digits",
    "metric_info",
    "model_settings",
    "newest_sweep",
    "notebook_params",
    "optuna_studies",
    "paired_comparisons",
    "paired_test",
    "param_importances",
    "plot_best_images",
    "plot_clustering_vs_k",
    "plot_metric_vs_k",
    "plot_optuna_history",
    "plot_optuna_params",
    "plot_rate_distortion",
    "plot_val_curves",
    "save",
    "setting_label",
    "short_key",
    "side_labels",
    "show",
    "status_counts",
    "summarize",
    "varying_keys",
    "verdict",
    "verdict_markdown",
]
