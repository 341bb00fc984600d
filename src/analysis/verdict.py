"""The verdict: sentences written from the data, honest about the number of seeds and significance,
and the caveats a reader must know before trusting the numbers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from src.analysis.grouping import (
    config_label,
    group_keys,
    select_rows,
    setting_label,
    short_key,
    side_labels,
    value_order,
)
from src.analysis.loading import completed, status_counts
from src.analysis.stats import best_configs, paired_comparisons, paired_test, per_seed, summarize
from src.analysis.studies import OptunaStudy, optuna_studies
from src.analysis.vocabulary import METRICS, VERDICT_METRICS, metric_digits, metric_info, unit_suffix
from src.formatting import MANY_TO_ONE, number, p_value


def describe_comparison(row: pd.Series, metric: str, keys: Sequence[str]) -> str:
    """One sentence for a paired comparison row: honest about n and significance."""
    m = METRICS[metric]
    ctx = setting_label(row.to_dict(), keys)
    where = f"{ctx}: " if ctx != "all runs" else ""
    n, dg, unit = int(row["n"]), metric_digits(metric), unit_suffix(metric)
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    name = side_labels(row.to_dict())
    a, b = name[row["a"]], name[row["b"]]
    if n < 2:
        return (
            f"{where}{a} vs {b} on {m.label}: only {seeds} in common "
            f"({a} {number(row['mean_a'], dg)}, {b} {number(row['mean_b'], dg)}); too few seeds to tell."
        )
    if row["better"] is None or pd.isna(row["better"]):
        return f"{where}{a} and {b} tie on {m.label} over {seeds} ({number(row['mean_a'], dg)})."
    winner, loser = (a, b) if row["better"] == row["a"] else (b, a)
    diff = abs(row["diff"])
    ci = row["diff_ci95"]
    pm = f" ± {number(ci, dg)}" if np.isfinite(ci) else ""
    p_txt = p_value(row["p"])
    if np.isfinite(row["p_holm"]) and row["p_holm"] != row["p"]:
        p_txt += f", Holm-adjusted {p_value(row['p_holm'])[2:]}"
    verb = "beats" if row["significant"] else "is ahead of"
    s = f"{where}{winner} {verb} {loser} on {m.label} by {number(diff, dg)}{pm}{unit} ({p_txt}, {seeds})"
    if row["significant"]:
        return s + (": significant, but with only 2 seeds treat it as preliminary." if n < 3 else ": significant.")
    if n < 3:
        return s + ": not significant, and too few seeds to tell."
    return s + ": not significant."


def study_sentences(study: OptunaStudy, runs: pd.DataFrame) -> list[str]:
    """A search's result: its best trial by the search's own objective (measured on validation data),
    and that one trial's test numbers."""
    t = study.trials
    n_done = int(t["value"].notna().sum())
    searched = ", ".join(short_key(p) for p in study.params)
    lines = [
        f"{len(t)} trials ({n_done} completed) searched {searched or 'the configuration'} for the "
        f"{'lowest' if study.direction == 'minimize' else 'highest'} {metric_info(study.objective).label} "
        f"({study.objective}), the search's own objective."
    ]
    best = study.best
    if best is None:
        return lines + ["No trial completed: the search has no result."]
    params = ", ".join(f"{short_key(p)}={number(best[p])}" for p in study.params)
    lines.append(
        f"Best trial by {study.objective}: trial {int(best['number'])} (run {best['run']}) with "
        f"{number(best['value'], metric_digits(study.objective))}{unit_suffix(study.objective)}"
        + (f" at {params}" if params else "")
        + "."
    )
    row = runs[runs["run"] == best["run"]]
    if len(row):
        r = row.iloc[0]
        sem = f" ± {number(r.get('test_nll_sem'), 2)}" if pd.notna(r.get("test_nll_sem")) else ""
        tests = [
            f"{METRICS[m].label} {number(r.get(m), metric_digits(m))}{sem if m == 'test_nll' else ''}{unit_suffix(m)}"
            for m in ("test_nll", "acc", "nmi", "ari")
            if pd.notna(r.get(m))
        ]
        if tests:
            lines.append(f"Its test numbers: {', '.join(tests)}" + (" (± the SEM over test points)." if sem else "."))
    lines.append(
        "Trials are chosen by the search's objective only; the other trials' test numbers are reported "
        "below, not ranked (choosing among them by a test number would select on test data)."
    )
    return lines


def verdict(
    runs: pd.DataFrame,
    summary: pd.DataFrame | None = None,
    comparisons: dict | None = None,
    studies: list[OptunaStudy] | None = None,
) -> list[tuple[str, list[str]]]:
    """The verdict written from the data, as sections: [(title, [sentence, ...]), ...].

    "Runs" (what was run and what was excluded); for runs that hold a search (an Optuna study), one
    section per study first: its best trial by the search's own objective and that trial's test
    numbers; then one section per metric of VERDICT_METRICS (the best configuration and how clearly it
    leads, left out when the runs hold a search, then every paired model comparison on common seeds),
    and "Caveats" (what the data says about how far to trust it).
    """
    sections: list[tuple[str, list[str]]] = []
    counts = status_counts(runs)
    ok = completed(runs)
    n_ex = len(runs) - len(ok)
    head = f"{len(runs)} run{'s' if len(runs) != 1 else ''}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
    if n_ex:
        head += (
            f"; the {n_ex} not completed {'is' if n_ex == 1 else 'are'} listed under Excluded runs and left out "
            "of all statistics"
        )
    overview = [head + "."]
    sections.append(("Runs", overview))
    if ok.empty:
        overview.append("No completed run: nothing to compare.")
        return sections
    summary = summarize(runs) if summary is None else summary
    keys = group_keys(runs)
    seeds_per = summary["n_runs"]
    datasets = ", ".join(sorted(map(str, ok["dataset"].dropna().unique())))
    design = " × ".join(_values_text(ok, k) for k in keys if ok[k].nunique() > 1)
    fixed = ", ".join(
        f"{short_key(k)}={number(ok[k].iloc[0])}"
        for k in ("prior", "K", "reg_weight", "latent_dim", "epochs", "is_samples")
        if k in ok and ok[k].nunique(dropna=False) == 1
    )
    overview.append(
        f"{len(summary)} configuration{'s' if len(summary) != 1 else ''} on {datasets}"
        + (f" ({design})" if design else "")
        + (f", all with {fixed}" if fixed else "")
        + f"; {_range_text(seeds_per)} completed seed{'s' if seeds_per.max() != 1 else ''} each. "
        "± below is the 95% confidence half-width (t distribution); p-values are from paired t-tests "
        "on the seeds both sides share."
    )

    studies = optuna_studies(runs) if studies is None else studies
    for study in studies:
        sections.append((f"Optuna study {study.name or study.sweep_dir.name}", study_sentences(study, runs)))
    comparisons = comparisons if comparisons is not None else {m: paired_comparisons(runs, m) for m in VERDICT_METRICS}
    for metric in VERDICT_METRICS:
        if f"{metric}_mean" not in summary:
            continue
        m, dg = METRICS[metric], metric_digits(metric)
        title = m.label[0].upper() + m.label[1:]
        ranked = best_configs(summary, metric)
        table = comparisons.get(metric)
        if table is None:
            table = pd.DataFrame()
        if studies:  # a search is decided by its own objective (above), never by a test metric
            if not table.empty:
                sections.append((title, [describe_comparison(row, metric, keys) for _, row in table.iterrows()]))
            continue
        if ranked.empty:
            if metric == "acc":
                sections.append(
                    (
                        "Clustering",
                        [
                            "No clustering metrics: every completed run has K = 1 "
                            "(one component has nothing to cluster)."
                        ],
                    )
                )
            continue
        lines: list[str] = []
        best = ranked.iloc[0]
        ci = best[f"{metric}_ci95"]
        ci_txt = (
            f"95% CI {number(best[f'{metric}_ci_low'], dg)} to {number(best[f'{metric}_ci_high'], dg)}"
            if np.isfinite(ci)
            else "no CI"
        )
        s = (
            f"Best {m.label}: {config_label(best.to_dict(), keys)} with {number(best[f'{metric}_mean'], dg)}"
            f"{unit_suffix(metric)} ({ci_txt}, n = {int(best[f'{metric}_n'])})"
        )
        if len(ranked) > 1:
            second = ranked.iloc[1]
            s += f"; runner-up {config_label(second.to_dict(), keys)} with {number(second[f'{metric}_mean'], dg)}"
            s += _separation(runs, best, second, metric, keys, table)
        lines.append(s + ".")
        if not table.empty:
            for _, row in table.iterrows():
                lines.append(describe_comparison(row, metric, keys))
            if len(table) > 1:
                n_sig = int(table["significant"].sum())
                lines.append(
                    f"{n_sig} of {len(table)} paired {m.label} comparisons significant at 0.05 after Holm "
                    "correction for the comparisons in this section."
                )
        sections.append((title, lines))
    cav = caveats(runs, summary)
    if cav:
        sections.append(("Caveats", cav))
    return sections


def verdict_markdown(sections: list[tuple[str, list[str]]]) -> str:
    """The verdict sections as Markdown (a bold title and bullets per section)."""
    parts = []
    for title, lines in sections:
        parts.append(f"**{title}**\n\n" + "\n".join(f"- {line}" for line in lines))
    return "\n\n".join(parts) + "\n"


def _values_text(df: pd.DataFrame, key: str, most: int = 6) -> str:
    """'K ∈ {1, 5, 10}', or 'K: 20 values from 1 to 50' when there are many."""
    vals = sorted(df[key].dropna().unique(), key=value_order)
    if len(vals) <= most:
        return f"{short_key(key)} ∈ {{{', '.join(number(v) for v in vals)}}}"
    return f"{short_key(key)}: {len(vals)} values from {number(vals[0])} to {number(vals[-1])}"


def _range_text(n: pd.Series) -> str:
    lo, hi = int(n.min()), int(n.max())
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def _same(x, y) -> bool:
    return bool(x == y) or (pd.isna(x) and pd.isna(y))


def _compared_below(table: pd.DataFrame, best: pd.Series, second: pd.Series, keys: Sequence[str]) -> bool:
    """Whether the paired model comparisons hold a row for best against runner-up: two models in one
    setting, each at its own weight."""
    if table.empty or best["model"] == second["model"]:
        return False
    setting = [k for k in keys if k not in ("model", "reg_weight")]
    for _, r in table.iterrows():
        if {r["a"], r["b"]} != {best["model"], second["model"]}:
            continue
        if not all(_same(r[k], best[k]) and _same(r[k], second[k]) for k in setting):
            continue
        weight = {r["a"]: r["weight_a"], r["b"]: r["weight_b"]}
        if "reg_weight" not in keys or all(_same(weight[c["model"]], c["reg_weight"]) for c in (best, second)):
            return True
    return False


def _separation(
    runs: pd.DataFrame, best: pd.Series, second: pd.Series, metric: str, keys: Sequence[str], table: pd.DataFrame
) -> str:
    """Is the best distinguishable from the runner-up? When the paired model comparisons (table) hold
    the two, that row says it, with Holm correction; otherwise a paired test on common seeds when
    possible (not corrected for having picked the best)."""
    if _compared_below(table, best, second, keys):
        return " (compared below)"
    ok = completed(runs)
    a, b = (select_rows(ok, keys, tuple(row[k] for k in keys)) for row in (best, second))
    r = paired_test(per_seed(a, metric), per_seed(b, metric))
    if r["n"] >= 2 and np.isfinite(r["p"]):
        return (
            f" — paired difference {number(abs(r['diff']), metric_digits(metric))} ({p_value(r['p'])} over "
            f"{r['n']} seeds, not corrected for picking the best)"
        )
    lo1, hi1 = best[f"{metric}_ci_low"], best[f"{metric}_ci_high"]
    lo2, hi2 = second[f"{metric}_ci_low"], second[f"{metric}_ci_high"]
    if all(np.isfinite([lo1, hi1, lo2, hi2])):
        return (
            " — their 95% CIs overlap, so the order is not established"
            if (lo1 <= hi2 and lo2 <= hi1)
            else " — their 95% CIs do not overlap"
        )
    return " — too few seeds to tell them apart"


def caveats(runs: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """Things a reader must know before trusting the numbers, detected in the data."""
    ok = completed(runs)
    out = []
    n = summary["n_runs"] if "n_runs" in summary else pd.Series(dtype=int)
    if len(n) and n.max() == 1:
        out.append(
            "One seed per configuration: no confidence intervals or tests are possible, and differences "
            "may be seed noise."
        )
    elif len(n) and n.max() < 3:
        out.append(
            f"With at most {int(n.max())} seeds per configuration, confidence intervals are wide or "
            "undefined and only large differences can reach significance."
        )
    s = ok["is_samples"].dropna()
    if len(s) and s.min() < 1000:
        out.append(
            f"Test NLL uses S = {_range_text(s)} importance samples per point; the estimate is an upper bound "
            "that loosens as S shrinks (the literature protocol uses S = 5000)."
        )
    at_last = ok["best_epoch"].notna() & (ok["best_epoch"] == ok["epochs_run"])
    still = ok[at_last & (ok["stopped_early"] != True)]  # noqa: E712 (NaN and None count as not stopped)
    if len(ok) and len(still) / len(ok) >= 0.5:
        out.append(
            f"{len(still)} of {len(ok)} completed runs had their best validation loss at the last epoch "
            f"({_range_text(ok['epochs_run'].dropna())} epochs): they were still improving, and longer training "
            "may change the ranking."
        )
    clust = ok[(ok["K"].fillna(1) > 1) & ok["n_clusters_used"].notna()]
    if len(clust):
        for keys, g in clust.groupby(["model", "K"], sort=True):
            used, K = g["n_clusters_used"].astype(float).mean(), int(keys[1])
            if used <= max(1.0, K / 2):
                out.append(
                    f"{keys[0]}, K={K}: test points are assigned to only {used:.1f} of {K} components on "
                    f"average, so its clustering scores describe a collapsed assignment."
                )
    if "acc_mapping" in ok and (ok["acc_mapping"] == "many_to_one").any():
        out.append(f"ACC for K above the number of classes uses {MANY_TO_ONE}. Compare ACC across K with care.")
    if ok["model"].nunique() > 1 and "test_reg" in ok:
        out.append(
            "Regulariser values (test_reg) and training losses are KL for vae and Cauchy–Schwarz divergence "
            "for csrae: they are not comparable across models; NLL and reconstruction are."
        )
    return out
