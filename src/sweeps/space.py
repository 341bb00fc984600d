"""An Optuna sweep's search space, parsed from its hydra.sweeper.params and command-line overrides by
the Optuna plugin's own parser, so the sweep, the report and the tests read the same distributions:
int(interval(1, 50)) -> IntDistribution(1, 50), tag(log, interval(a, b)) -> FloatDistribution(a, b,
log=True), choice(...) -> CategoricalDistribution; range(a, b) stops before b, as in Python and Hydra's
grids."""

from __future__ import annotations

from typing import Any


def search_space(params: Any, arguments: list[str] | None = None) -> tuple[dict, dict, list[str]]:
    """(distributions, fixed params, fixed overrides): a fixed value for a searched key takes it out
    of the search."""
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    texts = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments or [])
    space, fixed, fixed_overrides = create_params_from_overrides(texts)
    for name in fixed:
        space.pop(name, None)
    return space, fixed, fixed_overrides
