"""Importance-sampled test NLL of one finished run, S samples on the first N test points, point by point;
writes <run dir>/bench_eval.json (or --out).

    python benchmarks/mnist_eval.py benchmarks/runs/csrae_gmm10_s0 --samples 1000 --n-test 2000

The model is src.finished_runs.load_model's (the run's .hydra/config.yaml and the weights its own final
evaluation uses), the estimate src.evaluate.importance_sampled_nll with its noise seeded by --seed:
two runs evaluated with the same seed, S and points share their noise point by point, which makes
their per-point difference paired (mnist_converged.py --paired). The run's whole evaluation again
(validation NLL, clustering, few-label accuracies) is `python -m src.evaluate RUN_DIR`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src import rundir  # noqa: E402
from src.data import load_dataset  # noqa: E402
from src.errors import UserError  # noqa: E402
from src.evaluate import importance_sampled_nll  # noqa: E402
from src.finished_runs import load_model  # noqa: E402


def evaluate(run_dir: Path, samples: int, n_test: int, batch: int, seed: int) -> dict:
    run = load_model(run_dir)
    rundir.lock(run_dir)  # refused while a run (or another evaluation) is using the dir; released at exit
    x = load_dataset(run.cfg.dataset).test.x[:n_test]
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    nll = importance_sampled_nll(
        run.model, x, n_samples=samples, chunk=samples, batch=batch, device=torch.device("cpu"), name=run_dir.name
    )  # src.evaluate bounds the rows per chunk itself
    return {
        "test_nll": nll.mean().item(),
        "test_nll_sem": (nll.std() / math.sqrt(len(nll))).item(),
        "is_samples": samples,
        "n_test": len(nll),
        "seed": seed,
        "seconds": time.perf_counter() - t0,
        "chunk": samples,
        "batch": batch,
        "checkpoint": run.checkpoint.name,
        "checkpoint_epoch": run.epoch,
        "per_point_nll": [round(v, 4) for v in nll.tolist()],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench_eval.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")  # progress
    torch.set_num_threads(args.threads)
    try:
        out = evaluate(args.run_dir, args.samples, args.n_test, args.batch, args.seed)
    except UserError as e:
        sys.exit(f"error: {e}")
    (args.run_dir / args.out).write_text(json.dumps(out))
    print(
        f"{args.run_dir.name}: test NLL {out['test_nll']:.2f} ± {out['test_nll_sem']:.2f} "
        f"(S={args.samples}, first {out['n_test']} test points) in {out['seconds']:.0f}s"
    )


if __name__ == "__main__":
    main()
