"""benchmarks/search_cost.py's comparison of a pruned search with the unpruned one (no training here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _search_cost():
    sys.path.insert(0, str(BENCHMARKS))  # search_cost imports its neighbours
    try:
        spec = importlib.util.spec_from_file_location("search_cost", BENCHMARKS / "search_cost.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCHMARKS))


def _row(pruner: str, vals: list[float]) -> dict:
    best = min(vals)
    return {
        "setting": "digits",
        "pruner": pruner,
        "cpu_seconds": 100.0 if pruner == "none" else 40.0,
        "best_val_nll": round(best, 3),
        "best_val_nll_sem": 0.1,
        "_best": best,
        "_vals": vals,
    }


def test_ranks_compare_exact_values_not_the_rounded_ones():
    """A best of 22.1306 shows as 22.131; the unpruned search's own best must still rank first."""
    rows = [_row("none", [22.1306, 22.5, 23.0]), _row("hyperband", [22.5, 24.0])]
    _search_cost().compare(rows)
    none, hyperband = rows
    assert none["best_rank_among_none"] == 1 and hyperband["best_rank_among_none"] == 2
    assert (none["cpu_vs_none"], hyperband["cpu_vs_none"]) == (1.0, 0.4)
    assert hyperband["within_none_95ci"] is False and none["within_none_95ci"] is True
