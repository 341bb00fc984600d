"""What the benchmark scripts share: the code a measurement ran (commit and uncommitted files) and the
machine's CPU, for the header of each results file."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    """What `git ARGS` prints in the repository, stripped; "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def commit_stamp() -> str:
    """`abc1234`, or `abc1234` (+ uncommitted changes in src/x.py, ...): what the measured code imported."""
    stamp = f"`{git('rev-parse', '--short', 'HEAD')}`"
    dirty = git("status", "--porcelain", "--", "src").split()[1::2]
    return stamp + (f" (+ uncommitted changes in {', '.join(dirty)})" if dirty else "")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def read_json(path: Path):
    """A run's JSON file (results.json, ...), or None while it is missing or half-written."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
