"""README's claims, checked against what they describe: its GECO command run as written."""

from __future__ import annotations

import csv
import re
import shlex
import subprocess
import sys
from pathlib import Path

from cli import subprocess_env

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def readme_command(*words: str) -> list[str]:
    """The arguments of README's one `python -m src.run ...` line holding every word (comment dropped)."""
    lines = [ln for ln in README.splitlines() if ln.startswith("python -m src.run") and all(w in ln for w in words)]
    assert len(lines) == 1, lines
    return shlex.split(lines[0], comments=True)[3:]


def test_readmes_geco_command_meets_its_target(tmp_path):
    """The documented GECO command ends with the train reconstruction within 5% of κ over the last
    fifth of training (a fixed ν = 2e-3 swung between 1 and 24 nats and ended at 19-21 against 15)."""
    args = readme_command("model.constraint=reconstruction")
    kappa = float(next(a.split("=", 1)[1] for a in args if a.startswith("model.target_recon=")))
    p = subprocess.run(
        [sys.executable, "-m", "src.run", *args],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = tmp_path / re.search(r"^done: (\S+)", p.stdout, re.M).group(1)
    with open(run_dir / "metrics.csv") as f:
        recon = [float(r["train_recon"]) for r in csv.DictReader(f)]
    last = recon[len(recon) - len(recon) // 5 :]
    assert len(recon) >= 100 and len(last) == len(recon) // 5
    worst = max(abs(r - kappa) for r in last)
    assert worst <= 0.05 * kappa, f"last fifth of train_recon {min(last):.2f}..{max(last):.2f} against κ = {kappa}"
