"""The CUDA path: run by benchmarks/gpu_check.sh on a GPU machine; skipped, with the reason in the
summary, where torch sees no CUDA device (never passed silently).

Everything the training loop, prior sampling, IS-NLL and clustering create must follow trainer.device:
a stray CPU tensor meeting a CUDA one raises, so a full run on CUDA checks it end to end.
"""

from __future__ import annotations

import pytest
import torch
from helpers import read_results

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu_check.sh)"),
]

F64 = torch.float64


def test_fused_mixture_terms_on_cuda_match_the_reference():
    from src.divergences import cs_divergence, log_mixture_density, log_mixture_self_integral, reference_math

    g = torch.Generator().manual_seed(0)
    k, b, d = 300, 64, 40
    tensors = [
        3.0 * torch.randn(b, d, generator=g, dtype=F64),
        torch.empty(b, d, dtype=F64).uniform_(-6, 2, generator=g),
        torch.randn(k, generator=g, dtype=F64),
        3.0 * torch.randn(k, d, generator=g, dtype=F64),
        torch.empty(k, d, dtype=F64).uniform_(-6, 2, generator=g),
    ]
    mu, lv, logits, p_mu, p_lv = [t.cuda().requires_grad_(True) for t in tensors]

    def value_and_grads():
        out = (
            cs_divergence(mu, lv, p_mu, p_lv, logits).sum()
            + log_mixture_self_integral(logits, p_mu, p_lv)
            + log_mixture_density(mu, logits, p_mu, p_lv).sum()
        )
        return out.detach(), torch.autograd.grad(out, (mu, lv, logits, p_mu, p_lv))

    got, got_grads = value_and_grads()
    with reference_math():
        ref, ref_grads = value_and_grads()
    assert got.is_cuda
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=0)
    for a, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-6, atol=1e-9 * r.abs().max().item())


@pytest.mark.parametrize("model,prior", [("csrae", "gmm"), ("vae", "vamp"), ("csrae", "net")])
def test_a_whole_run_on_cuda(model, prior, compose, tmp_path):
    """Training (incl. the k-means refit), IS-NLL, clustering and images, all on trainer.device=cuda."""
    from src.pipeline import run_experiment

    cfg = compose(
        f"model={model}",
        f"prior={prior}",
        "prior.K=10",
        "trainer.device=cuda",
        "trainer.epochs=2",
        "prior.kmeans_epoch=1",
        "eval.images=true",
    )
    run_experiment(cfg, tmp_path)
    r = read_results(tmp_path)
    assert r["status"] == "completed" and r["device"].startswith("cuda")
    assert r["test_nll"] > 0 and r["acc"] is not None


def test_prior_sampling_on_cuda_matches_cpu():
    from src.priors import GaussianMixture

    prior = GaussianMixture(5, 3)
    z_cpu, k_cpu = prior.sample(20, generator=torch.Generator().manual_seed(1))
    z_gpu, k_gpu = prior.cuda().sample(20, generator=torch.Generator().manual_seed(1))
    assert z_gpu.is_cuda and k_gpu.is_cuda
    torch.testing.assert_close(z_gpu.cpu(), z_cpu)
    assert torch.equal(k_gpu.cpu(), k_cpu)
