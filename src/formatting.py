"""Numbers as people read them: the one formatter behind run headlines, report tables and verdicts."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any, Optional

MISSING = "–"  # what a table or sentence shows for null, NaN or a value that is not finite


def number(v: Any, digits: Optional[int] = None) -> str:
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


def p_value(p: float) -> str:
    """'p < 0.001', 'p = 0.004', 'p = 0.31' (two decimals are enough above 0.01)."""
    if p is None or not math.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"
