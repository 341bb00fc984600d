"""Numbers as people read them: the one formatter behind run headlines, report tables and verdicts."""

from __future__ import annotations

import math
import os
import sys
from numbers import Integral, Real
from typing import Any

MISSING = "–"  # what a table or sentence shows for null, NaN or a value that is not finite
#: What clustering ACC means when there are more components than classes (acc_mapping many_to_one):
#: said wherever such an ACC is shown (run headlines, the report's caveats).
MANY_TO_ONE = "a many-to-one majority mapping, which favours large K; NMI and ARI are not mapped"


def plain_when_redirected() -> None:
    """No colour codes in a log that is not a terminal: NO_COLOR (no-color.org), which Optuna's
    coloured log lines (colorlog) honour, set for this process and its jobs unless the user chose."""
    if not sys.stderr.isatty() and "FORCE_COLOR" not in os.environ:
        os.environ.setdefault("NO_COLOR", "1")


def number(v: Any, digits: int | None = None) -> str:
    """`digits` decimals (or the shortest form, `%g`, when None) for a float; str() for anything else;
    MISSING for None, NaN, ±inf and pandas' NA."""
    if v is None or str(v) in ("<NA>", "NaT"):
        return MISSING
    if isinstance(v, Real) and not isinstance(v, Integral):  # float, numpy floats; not int or bool
        v = float(v)
        if not math.isfinite(v):
            return MISSING
        return f"{v:g}" if digits is None else f"{v:.{digits}f}"
    return str(v)


def duration(seconds: float) -> str:
    """'40 s', '12 min', '2 h 05 min': a time span as people read it in a log."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    m = round(seconds / 60)
    return f"{m} min" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def p_value(p: float) -> str:
    """'p < 0.001', 'p = 0.004', 'p = 0.31' (two decimals are enough above 0.01)."""
    if p is None or not math.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def headline(r: dict, digits: int = 2) -> str:
    """The one-line summary of a results.json (or a re-evaluation's) record, as the commands print it."""
    n_test = f", {r['n_test']} points" if r.get("n_test") is not None else ""
    parts = [
        f"test NLL {number(r.get('test_nll'), digits)} ± {number(r.get('test_nll_sem'), digits)} nats "
        f"(S={r.get('is_samples')}{n_test})",
        f"val NLL {number(r.get('val_nll'), digits)}",
    ]
    if r.get("acc") is not None:
        mapping = r.get("acc_mapping")
        if mapping == "many_to_one":
            mapping = f"K={r.get('K')} components, more than the classes: {MANY_TO_ONE}"
        parts.append(
            f"ACC {number(r['acc'], 3)} ({mapping}) NMI {number(r.get('nmi'), 3)} ARI {number(r.get('ari'), 3)}"
        )
    timing = []
    if r.get("epochs_run") is not None:  # a re-evaluation has no training of its own
        timing += [f"{r['epochs_run']} epochs", f"training {number(r.get('train_seconds'), 1)}s"]
    timing.append(f"evaluation {number(r.get('eval_seconds'), 1)}s")
    parts.append(", ".join(timing))
    if r.get("non_finite"):
        parts.append(f"not finite: {', '.join(f'{k}={v}' for k, v in r['non_finite'].items())}")
    return " | ".join(parts)
