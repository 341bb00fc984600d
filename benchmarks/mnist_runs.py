"""MNIST benchmark queue: train each configuration with the harness, one process at a time, then
re-evaluate the test NLL by importance sampling on a fixed test subset; rebuild the tables after
every run (benchmarks/mnist_tables.py), so they fill in progressively.

    python benchmarks/mnist_runs.py            # run the whole plan (resumable)
    python benchmarks/mnist_runs.py --list     # show the plan and each run's state
    nohup python benchmarks/mnist_runs.py > benchmarks/runs/queue.log 2>&1 &

Resumable: a run whose results.json says "completed" and whose bench_eval.json exists is skipped;
a half-trained run is resumed from its checkpoints/last.pt (the harness does that when it is
started again with the same hydra.run.dir). Runs live under benchmarks/runs/<name>/ (git-ignored).

Why a separate evaluation: the harness computes the IS-NLL on the whole validation and test sets;
at S=500+ on 2×10 000 points that costs more CPU than the training budget here. The harness run is
therefore made with eval.is_samples=1 (its test_nll is then a one-sample bound: not reported), its
clustering metrics are on the full 10 000 test points, and bench_eval.json holds the IS-NLL with
S=IS_SAMPLES on the first N_TEST test points (the same points for every run, so differences between
rows are paired). The plan is re-read before each run, so it may be edited while the queue runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py: what the benchmarks share
from common import read_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = ROOT / "benchmarks" / "runs"
DATA_ROOT = os.environ.get("MNIST_ROOT", str((ROOT / ".." / "shared" / "data").resolve()))

EPOCHS = 20  # CPU budget: 2 shared cores, < 2 h for the whole plan (~6 s an epoch on one thread)
WARMUP = 5  # linear warm-up of the regulariser weight (VampPrior: 100 of ~2000 epochs)
KMEANS_EPOCH = 5  # gmm prior: VaDE-style refit at the end of warm-up
IS_SAMPLES = 1000  # S of the re-evaluated test NLL
N_TEST = 2000  # first N_TEST test points (of 10 000)
FINAL = "@S5000"  # a PLAN entry "<run>@S5000": the literature protocol, S=5000 on all 10 000 test points
FINAL_SAMPLES, FINAL_N_TEST, FINAL_OUT = 5000, 10000, "bench_eval_s5000.json"

COMMON = [
    "dataset=mnist",
    f"dataset.root={DATA_ROOT}",
    f"trainer.epochs={EPOCHS}",
    f"trainer.warmup_epochs={WARMUP}",
    "trainer.threads=1",
    "trainer.progress=false",
    "eval.is_samples=1",
    "eval.images=false",
]


def _gmm(k):
    return ["prior=gmm", f"prior.K={k}", f"prior.kmeans_epoch={KMEANS_EPOCH}"]


# (name, overrides) in priority order: the density / clustering rows, then second seeds, then K=500.
PLAN = [
    ("csrae_gmm10_s0", ["model=csrae", *_gmm(10), "trainer.seed=0"]),
    ("vae_standard_s0", ["model=vae", "prior=standard", "trainer.seed=0"]),
    ("vae_vamp50_s0", ["model=vae", "prior=vamp", "prior.K=50", "trainer.seed=0"]),
    ("csrae_vamp50_s0", ["model=csrae", "prior=vamp", "prior.K=50", "trainer.seed=0"]),
    ("vae_gmm10_s0", ["model=vae", *_gmm(10), "trainer.seed=0"]),
    ("csrae_agg_gmm10_s0", ["model=csrae", "model.variant=aggregate", *_gmm(10), "trainer.seed=0"]),
    ("csrae_gmm30_s0", ["model=csrae", *_gmm(30), "trainer.seed=0"]),
    ("csrae_gmm10_s1", ["model=csrae", *_gmm(10), "trainer.seed=1"]),
    ("vae_standard_s1", ["model=vae", "prior=standard", "trainer.seed=1"]),
    ("vae_vamp50_s1", ["model=vae", "prior=vamp", "prior.K=50", "trainer.seed=1"]),
    ("csrae_vamp50_s1", ["model=csrae", "prior=vamp", "prior.K=50", "trainer.seed=1"]),
    ("vae_gmm10_s1", ["model=vae", *_gmm(10), "trainer.seed=1"]),
    ("vae_vamp500_s0", ["model=vae", "prior=vamp", "prior.K=500", "trainer.seed=0"]),
    ("vae_vamp500_s0" + FINAL, []),  # VampPrior's own configuration, evaluated as in the paper
    ("csrae_gmm50_s0", ["model=csrae", *_gmm(50), "trainer.seed=0"]),
    ("vae_gmm50_s0", ["model=vae", *_gmm(50), "trainer.seed=0"]),
    ("csrae_gmm30_s1", ["model=csrae", *_gmm(30), "trainer.seed=1"]),
    ("csrae_agg_gmm10_s1", ["model=csrae", "model.variant=aggregate", *_gmm(10), "trainer.seed=1"]),
    # The K=10 clustering pair again with the moment-matched GMM refit (commit 5812daf); rows above ran
    # with the means-only refit (see the gmm_refit column).
    ("csrae_gmm10mm_s0", ["model=csrae", *_gmm(10), "trainer.seed=0"]),
    ("vae_gmm10mm_s0", ["model=vae", *_gmm(10), "trainer.seed=0"]),
    # Last: a csrae step at K=500 costs ~12x a VampPrior vae step on CPU (the K×K prior self term;
    # results/speed.md), ~2 h for 20 epochs here.
    ("csrae_vamp500_s0", ["model=csrae", "prior=vamp", "prior.K=500", "trainer.seed=0"]),
]


def load_plan():
    """Re-read this file's PLAN (so edits made while the queue runs take effect)."""
    spec = importlib.util.spec_from_file_location("_plan", __file__)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.PLAN


def state(name: str) -> str:
    if FINAL in name:
        base = name.split(FINAL)[0]
        if (RUNS_DIR / base / FINAL_OUT).exists():
            return "done"
        return "todo" if state(base) == "done" else "waiting"
    d = RUNS_DIR / name
    r = read_json(d / "results.json")
    if r is None:
        return "todo"
    if r.get("status") != "completed":
        return r.get("status", "?")
    return "done" if (d / "bench_eval.json").exists() else "trained"


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S ", time.gmtime()) + msg, flush=True)


def _evaluate(run_dir: Path, samples: int, n_test: int, env: dict, out: str | None = None) -> bool:
    """IS-NLL of a finished run (benchmarks/mnist_eval.py), written beside its results.json."""
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "mnist_eval.py"),
        str(run_dir),
        "--samples",
        str(samples),
        "--n-test",
        str(n_test),
    ] + (["--out", out] if out else [])
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode == 0


def run_one(name: str, overrides: list[str]) -> bool:
    d = RUNS_DIR / name
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if FINAL in name:
        base = RUNS_DIR / name.split(FINAL)[0]
        _log(f"evaluate {base.name}: IS-NLL S={FINAL_SAMPLES} on all {FINAL_N_TEST} test points")
        if not _evaluate(base, FINAL_SAMPLES, FINAL_N_TEST, env, out=FINAL_OUT):
            _log(f"FAILED evaluating {name}")
            return False
    else:
        if state(name) not in ("trained", "done"):
            _log(f"train {name}: {' '.join(overrides)}")
            cmd = [sys.executable, "-m", "src.run", *COMMON, *overrides, f"hydra.run.dir={d}"]
            if subprocess.run(cmd, cwd=ROOT, env=env).returncode != 0:
                _log(f"FAILED training {name}")
                return False
        if state(name) == "trained":
            _log(f"evaluate {name}: IS-NLL S={IS_SAMPLES} on {N_TEST} test points")
            if not _evaluate(d, IS_SAMPLES, N_TEST, env):
                _log(f"FAILED evaluating {name}")
                return False
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mnist_tables.py")], cwd=ROOT, env=env)
    _log(f"finished {name}")
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="show the plan and each run's state")
    ap.add_argument("--only", nargs="*", help="run only these names")
    args = ap.parse_args()
    RUNS_DIR.mkdir(parents=True, exist_ok=True)
    if args.list:
        for name, ov in load_plan():
            print(f"{state(name):10s} {name:22s} {' '.join(ov)}")
        return
    failed: set[str] = set()
    while True:
        todo = [
            (n, ov)
            for n, ov in load_plan()
            if state(n) not in ("done", "waiting") and n not in failed and (not args.only or n in args.only)
        ]
        if not todo:
            break
        name, ov = todo[0]
        if not run_one(name, ov):
            failed.add(name)
    _log("queue empty" + (f"; failed: {sorted(failed)}" if failed else ""))


if __name__ == "__main__":
    main()
