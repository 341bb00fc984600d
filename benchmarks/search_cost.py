"""What does pruning save on a real search? The same seeded TPE search (sweep=csrae_optuna) with
pruner=none, median and hyperband, each run as 2 worker processes sharing one study budget
(hydra.sweeper.budget=study, one thread each, worker w with sampler seed w):

- digits: 24 trials x 60 epochs
- mnist:  12 trials x 30 epochs on dataset.max_train=10000 (MNIST from MNIST_ROOT, default ../shared/data),
  evaluated on 2000 validation and test points with S = 100 (the search's objective is val_nll)

For each search: total epochs trained, CPU time of all its processes (user + sys), wall time with the
2 workers, the best val_nll found (± its standard error over validation points), and where that best
would rank among the unpruned search's completed trials. Target: hyperband's CPU time <= 0.40 x none's,
with its best val_nll within the unpruned best's 95% interval (or better).

    python benchmarks/search_cost.py                         # both settings, all three pruners
    python benchmarks/search_cost.py --settings digits --pruners none hyperband

Writes benchmarks/results/search_cost.csv (one row per search; rows of settings not rerun are kept)
and search_cost.md. Run directories and studies go to benchmarks/runs/search_cost/ (git-ignored).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py and sweep_parallel.py beside it
from common import git  # noqa: E402
from sweep_parallel import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RUNS = REPO / "benchmarks" / "runs" / "search_cost"
DATA_ROOT = os.environ.get("MNIST_ROOT", str((REPO / ".." / "shared" / "data").resolve()))
SETTINGS = {  # name: (trials, epochs, overrides)
    "digits": (24, 60, []),
    "mnist": (
        12,
        30,
        [
            "dataset=mnist",
            f"dataset.root={DATA_ROOT}",
            "dataset.max_train=10000",
            "dataset.max_eval=2000",
            "eval.is_samples=100",
        ],
    ),
}
PRUNERS = ["none", "median", "hyperband"]
WORKERS = 2
COLUMNS = [
    "setting",
    "pruner",
    "trials",
    "complete",
    "pruned",
    "failed",
    "epochs_trained",
    "epochs_if_unpruned",
    "cpu_seconds",
    "cpu_vs_none",
    "wall_seconds",
    "best_val_nll",
    "best_val_nll_sem",
    "best_rank_among_none",
    "within_none_95ci",
    "date",
    "commit",
]


def _cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_search(setting: str, pruner: str) -> dict:
    trials, epochs, extra = SETTINGS[setting]
    root = RUNS / f"{setting}-{pruner}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = root / "study.log"
    common = [
        "sweep=csrae_optuna",
        f"pruner={pruner}",
        f"hydra.sweeper.n_trials={trials}",
        "hydra.sweeper.budget=study",
        f"hydra.sweeper.storage={storage}",
        f"trainer.epochs={epochs}",
        "trainer.threads=1",
        "trainer.progress=false",
        "eval.images=false",
        *extra,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-m", "src.sweeps", "create", *common], cwd=REPO, env=env, check=True)
    cpu0, t0 = _cpu_children(), time.perf_counter()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "src.run",
                "-m",
                *common,
                f"hydra.sweeper.sampler.seed={w}",
                f"hydra.sweep.dir={root / f'w{w}'}",
            ],
            cwd=REPO,
            env=env,
            stdout=open(root / f"w{w}.log", "w"),
            stderr=subprocess.STDOUT,
        )
        for w in range(WORKERS)
    ]
    codes = [w.wait() for w in workers]
    wall, cpu = time.perf_counter() - t0, _cpu_children() - cpu0
    if any(codes):
        sys.exit(f"error: a worker of {root.name} failed (exit codes {codes}); see {root}/w*.log")
    runs = [json.loads(p.read_text()) for p in root.glob("w*/*/results.json")]
    done = [r for r in runs if r["status"] == "completed"]
    best = min(done, key=lambda r: r["val_nll"]) if done else None
    return {
        "setting": setting,
        "pruner": pruner,
        "trials": len(runs),
        "complete": len(done),
        "pruned": sum(r["status"] == "pruned" for r in runs),
        "failed": sum(r["status"] not in ("completed", "pruned") for r in runs),
        "epochs_trained": sum(r.get("epochs_run") or 0 for r in runs),
        "epochs_if_unpruned": trials * epochs,
        "cpu_seconds": round(cpu, 1),
        "wall_seconds": round(wall, 1),
        "best_val_nll": round(best["val_nll"], 3) if best else None,
        "best_val_nll_sem": round(best["val_nll_sem"], 3) if best else None,
        "_best": best["val_nll"] if best else None,  # unrounded: ranks compare exact values
        "_vals": [r["val_nll"] for r in done],
        "date": datetime.date.today().isoformat(),
        "commit": git("rev-parse", "--short", "HEAD"),
    }


def compare(rows: list[dict]) -> None:
    """cpu_vs_none, best_rank_among_none and within_none_95ci of each search against its setting's none."""
    for row in rows:
        base = next((r for r in rows if r["setting"] == row["setting"] and r["pruner"] == "none"), None)
        if base is None or row["best_val_nll"] is None or base["best_val_nll"] is None:
            continue
        row["cpu_vs_none"] = round(row["cpu_seconds"] / base["cpu_seconds"], 3)
        row["best_rank_among_none"] = 1 + sum(v < row["_best"] for v in base["_vals"])
        row["within_none_95ci"] = row["_best"] <= base["_best"] + 1.96 * base["best_val_nll_sem"]


def write(rows: list[dict], load: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "search_cost.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [
        "# Search cost with and without pruning (benchmarks/search_cost.py)",
        "",
        f"Machine: {machine()}; load average before the runs: {load}. The same seeded TPE search",
        "(`sweep=csrae_optuna`, 2 worker processes sharing one study budget, 1 thread each). CPU time is",
        "every process of the search (user + sys); the target is hyperband's CPU <= 0.40 x none's with its",
        "best val NLL within the unpruned best's 95% interval (best + 1.96 s.e.) or better.",
        "",
        "| setting | pruner | trials (complete / pruned / failed) | epochs trained | CPU s | CPU vs none | wall s "
        "| best val NLL ± s.e. | rank among none's trials | within none's 95% CI |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['pruner']} | {r['trials']} ({r['complete']} / {r['pruned']} / {r['failed']}) "
            f"| {r['epochs_trained']} of {r['epochs_if_unpruned']} | {r['cpu_seconds']} | {r.get('cpu_vs_none', '')} "
            f"| {r['wall_seconds']} | {r['best_val_nll']} ± {r['best_val_nll_sem']} "
            f"| {r.get('best_rank_among_none', '')} | {r.get('within_none_95ci', '')} |"
        )
    lines += ["", f"Measured {rows[0]['date'] if rows else ''} at commit {git('rev-parse', '--short', 'HEAD')}."]
    (RESULTS / "search_cost.md").write_text("\n".join(lines) + "\n")


def _kept_rows(settings: list[str]) -> list[dict]:
    path = RESULTS / "search_cost.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r["setting"] not in settings]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--pruners", nargs="*", default=PRUNERS, choices=PRUNERS)
    args = ap.parse_args(argv)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = []
    for setting in args.settings:
        for pruner in args.pruners:
            print(f"{setting} / pruner={pruner} ...", flush=True)
            rows.append(run_search(setting, pruner))
            print(f"  {rows[-1]['epochs_trained']} epochs, {rows[-1]['cpu_seconds']} CPU s", flush=True)
    compare(rows)
    write(_kept_rows(args.settings) + rows, load)
    print(f"wrote {RESULTS / 'search_cost.md'}")


if __name__ == "__main__":
    main()
