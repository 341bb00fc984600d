"""Helpers for the percent-format notebooks in analysis/: their parameters and showing a figure."""

from __future__ import annotations

import sys
from pathlib import Path

from src.analysis.figures import plotting, save
from src.analysis.loading import newest_sweep


def notebook_params(sweep_dir=None, out=None, description: str = "") -> tuple[Path, Path | None]:
    """(sweep dir, figure dir) of an analysis/ notebook. The arguments are the notebook's parameters
    cell (papermill may replace it); run as `python analysis/X.py`, --sweep-dir and --out override
    them. Without a sweep dir: the newest sweep under outputs/multirun."""
    if "ipykernel" not in sys.modules:  # a script: read the command line
        import argparse

        ap = argparse.ArgumentParser(description=description)
        ap.add_argument(
            "--sweep-dir",
            default=sweep_dir,
            help="a sweep directory, a run, or outputs/ (default: newest sweep under outputs/multirun)",
        )
        ap.add_argument("--out", default=out, help="save the figures as PNGs here (default: show them)")
        args = ap.parse_args()
        sweep_dir, out = args.sweep_dir, args.out
    if sweep_dir is None:
        sweep_dir = newest_sweep()
        if sweep_dir is None:
            raise SystemExit("no sweep under outputs/multirun: pass --sweep-dir DIR")
        print(f"newest sweep: {sweep_dir}")
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    return Path(sweep_dir), (Path(out) if out is not None else None)


def show(fig, out: Path | None = None, name: str = "figure.png") -> None:
    """Save the figure into out when given; else show it (inline in Jupyter; nothing under Agg)."""
    if fig is None:
        print(f"({name}: nothing to draw)")
        return
    if out is not None:
        print(f"saved {save(fig, Path(out) / name)}")
        return
    plt, _ = plotting()
    import matplotlib

    if matplotlib.get_backend().lower() == "agg":
        plt.close(fig)
    else:
        plt.show()
