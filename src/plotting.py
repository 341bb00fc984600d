"""matplotlib's pyplot for the figures the project writes to files.

A leaf: src.evaluate (a run's images) and src.analysis.figures (reports, notebooks) both draw with it.
"""

from __future__ import annotations

import os
import sys


def pyplot():
    """matplotlib.pyplot, on the Agg backend (files, no display needed) unless a backend is chosen
    already: by the MPLBACKEND variable, or by whoever imported pyplot first (a notebook's backend)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
