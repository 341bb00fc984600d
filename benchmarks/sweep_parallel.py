"""What do 2 joblib workers gain over 1 for a small sweep on this machine?

Runs the same 4-job grid (model=vae,csrae x prior.K=5,10 on digits) through
`hydra/launcher=joblib`, once per configuration and repetition, and times the whole
`python -m src.run -m ...` command (process start, joblib workers, training, evaluation):

- `1w_auto`: 1 worker, trainer.threads=0 -> the job takes all CPUs (src.sweeps.jobs.job_threads)
- `2w_auto`: 2 workers, trainer.threads=0 -> each job takes cpus // 2 threads (1 on 2 cores)
- `1w_1t`:   1 worker, 1 torch thread (pure job-level parallelism vs none, with `2w_auto` on 2 cores)

Configurations are interleaved within each repetition so slow drifts in machine load hit all of
them alike. The 1-minute load average is recorded before and after every run: on a shared machine
it says how much the numbers can be trusted.

    python benchmarks/sweep_parallel.py                 # 3 repetitions, 40 epochs per job
    python benchmarks/sweep_parallel.py --reps 5 --epochs 10 --configs 2w_auto 1w_1t

Writes benchmarks/results/sweep_parallel.csv (one row per run) and sweep_parallel.md (medians,
spread, ratios, date, commit, machine).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py: what the benchmarks share
from common import git  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GRID = ["model=vae,csrae", "prior=gmm", "prior.K=5,10"]
CONFIGS = {  # name: (joblib workers, trainer.threads)
    "1w_auto": (1, 0),
    "2w_auto": (2, 0),
    "1w_1t": (1, 1),
}


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (
        f"{model}, {len(os.sched_getaffinity(0))} usable CPUs, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {platform.system()} {platform.release()}"
    )


def run_once(workers: int, threads: int, epochs: int, sweep_dir: Path) -> float:
    cmd = [
        sys.executable,
        "-m",
        "src.run",
        "-m",
        *GRID,
        "hydra/launcher=joblib",
        f"hydra.launcher.n_jobs={workers}",
        f"trainer.threads={threads}",
        f"trainer.epochs={epochs}",
        "trainer.device=cpu",
        "trainer.progress=false",
        "trainer.checkpoint=false",
        "eval.is_samples=100",
        "eval.images=false",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"sweep failed ({' '.join(cmd)}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    done = [
        d
        for d in sweep_dir.iterdir()
        if (d / "results.json").exists() and '"completed"' in (d / "results.json").read_text()
    ]
    if len(done) != 4:
        raise SystemExit(f"expected 4 completed jobs in {sweep_dir}, found {len(done)}")
    return wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)

    started = datetime.datetime.now(datetime.timezone.utc)
    commit = git("rev-parse", "--short", "HEAD") + (
        "+dirty" if git("status", "--porcelain", "--", "src", "conf") else ""
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="sweep_parallel_") as tmp:
        for rep in range(args.reps):
            order = args.configs if rep % 2 == 0 else list(reversed(args.configs))
            for name in order:
                workers, threads = CONFIGS[name]
                load_before = os.getloadavg()[0]
                wall = run_once(workers, threads, args.epochs, Path(tmp) / f"{name}_{rep}")
                load_after = os.getloadavg()[0]
                rows.append(
                    {
                        "config": name,
                        "workers": workers,
                        "threads": threads,
                        "rep": rep,
                        "jobs": 4,
                        "epochs": args.epochs,
                        "wall_s": round(wall, 2),
                        "load1_before": round(load_before, 2),
                        "load1_after": round(load_after, 2),
                    }
                )
                print(f"rep {rep} {name:8s} {wall:7.1f} s   load {load_before:.2f} -> {load_after:.2f}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "sweep_parallel.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    walls = {c: [r["wall_s"] for r in rows if r["config"] == c] for c in args.configs}
    med = {c: statistics.median(v) for c, v in walls.items()}
    loads = [r["load1_before"] for r in rows] + [r["load1_after"] for r in rows]
    lines = [
        "# Sweep parallelism: joblib with 2 workers vs 1",
        "",
        f"Generated by `python benchmarks/sweep_parallel.py --reps {args.reps} --epochs {args.epochs}` on "
        f"{started:%Y-%m-%d %H:%M} UTC, commit {commit}.",
        f"Machine: {machine()}.",
        f"Load (1-min average, before/after each run): min {min(loads):.2f}, median {statistics.median(loads):.2f}, "
        f"max {max(loads):.2f}"
        + (
            " - the machine was shared with other work; treat the ratios as rough."
            if statistics.median(loads) > 1.5
            else "."
        ),
        "",
        f"Sweep: the 4-job grid `{' '.join(GRID)}` on digits, {args.epochs} epochs, eval.is_samples=100, "
        "no images or checkpoints, `hydra/launcher=joblib`. Wall time of the whole command (start-up included).",
        "",
        "| config | joblib workers | torch threads per job | median wall (s) | min - max (s) | runs |",
        "|---|---|---|---|---|---|",
    ]
    for c in args.configs:
        workers, threads = CONFIGS[c]
        t = "auto (cpus // workers)" if threads == 0 else str(threads)
        lines.append(
            f"| `{c}` | {workers} | {t} | {med[c]:.1f} | {min(walls[c]):.1f} - {max(walls[c]):.1f} | {len(walls[c])} |"
        )
    lines.append("")
    for one in ("1w_auto", "1w_1t"):
        if one in med and "2w_auto" in med:
            lines.append(f"- `{one}` / `2w_auto` median wall-time ratio: **{med[one] / med['2w_auto']:.2f}x**")
    lines.append("")
    lines.append(
        "joblib with 1 worker runs the jobs one after the other inside the launching process (no worker "
        "processes); with 2 workers each worker is a fresh process (loky) that imports torch and this code "
        "before its first job, a fixed cost that short jobs do not amortise."
    )
    lines.append("")
    lines.append("Raw runs: [sweep_parallel.csv](sweep_parallel.csv).")
    (args.out / "sweep_parallel.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
