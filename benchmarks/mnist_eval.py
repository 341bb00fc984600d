"""Re-evaluate one finished harness run: importance-sampled test NLL with S samples on the first
N test points, from checkpoints/best.pt; writes <run dir>/bench_eval.json.

    python benchmarks/mnist_eval.py benchmarks/runs/csrae_gmm10_s0 --samples 1000 --n-test 2000

The data and the model come from the run's own .hydra/config.yaml (same binarisation of the test
set, seed 777). Memory is bounded by choosing the sample chunk so that chunk × batch × max(K, D)
stays below ~20M numbers (the [points, K] log-densities of src.divergences.log_mixture_density_matmul).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.data import load_dataset  # noqa: E402
from src.evaluate import importance_sampled_nll  # noqa: E402
from src.models import build_model  # noqa: E402
from src.pipeline import config_fingerprint  # noqa: E402
from src.train import load_best_weights  # noqa: E402


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
    torch.set_num_threads(args.threads)

    cfg = OmegaConf.load(args.run_dir / ".hydra" / "config.yaml")
    data = load_dataset(cfg.dataset)
    model = build_model(cfg.model, cfg.prior, data.image_shape)
    if not load_best_weights(model, args.run_dir, config_fingerprint(cfg)):
        sys.exit(f"error: {args.run_dir}/checkpoints/best.pt not found")
    model.eval()
    x = data.test.x[:args.n_test]
    k, d = int(cfg.prior.K), int(cfg.model.latent_dim)
    chunk = args.samples  # src.evaluate bounds the rows per chunk itself
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    nll = importance_sampled_nll(model, x, n_samples=args.samples, chunk=chunk, batch=args.batch,
                                 device=torch.device("cpu"))
    seconds = time.perf_counter() - t0
    out = {"test_nll": nll.mean().item(), "test_nll_sem": (nll.std() / math.sqrt(len(nll))).item(),
           "is_samples": args.samples, "n_test": len(nll), "seed": args.seed, "seconds": seconds,
           "chunk": chunk, "batch": args.batch, "per_point_nll": [round(v, 4) for v in nll.tolist()]}
    (args.run_dir / args.out).write_text(json.dumps(out))
    print(f"{args.run_dir.name}: test NLL {out['test_nll']:.2f} ± {out['test_nll_sem']:.2f} "
          f"(S={args.samples}, first {len(nll)} test points) in {seconds:.0f}s")


if __name__ == "__main__":
    main()
