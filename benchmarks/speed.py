"""Speed ratios, all measured in this one process (CPU here; CUDA when present with --device auto):

  (a) training step csrae / vae, same networks, batch 100, D=40, K in {1, 10, 50, 500}
      (csrae + gmm prior K, vs vae + standard prior, closed-form KL; and vs vae + the same gmm
      prior, Monte-Carlo KL), and the VampPrior rows (a'') csrae+vamp / vae+vamp, (v) vae+vamp /
      vae+standard. Each ratio twice from the same repetitions: the fused path (the default) and the
      reference path (src.divergences.reference_math, VampPrior encoded in two calls: the code before
      it); (a*) fused / reference. Targets: <= 1.10 at K=50, <= 3.0 at K=500, vamp <= 1.5.
  (m) peak RSS of a fresh process after one csrae+gmm K=1000 step, fused and reference (CPU).
  (f) the same step on 2 torch threads / 1 thread, wall clock (CPU).
  (b) the same csrae step with D_CS computed by a naive per-sample Python loop over the batch and
      the components (src.divergences' formulas, one pair at a time) / the vectorised one.
  (c) one epoch of the harness trainer (src.train.fit, defaults: checkpoints, metrics.csv, per-step
      finiteness check) / a bare PyTorch loop of the same network, data, batch size and validation
      pass. Target <= 1.10.
  (d) importance-sampled NLL vectorised over test points (src.evaluate.importance_sampled_nll) /
      one test point at a time with the same S (the VampPrior / pythae way: per point, S samples
      in chunks of 100). Target <= 0.10.
  (e) the joblib sweep, 2 workers / 1 worker: benchmarks/sweep_parallel.py (separate script).

Every ratio is the median over --reps repetitions, each repetition timing numerator and denominator
back to back (interleaved, so drifting load on a shared machine hits both); min and max are given
as the spread. Data are random MNIST-shaped (1×28×28) images; timings do not depend on the weights.

    python benchmarks/speed.py                # ~5 minutes on one CPU thread
    python benchmarks/speed.py --quick        # fewer repetitions, a smoke test
Writes benchmarks/results/speed.{csv,md} (speed_cuda.{csv,md} on CUDA).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py: what the benchmarks share
from common import commit_stamp, cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from src import divergences as dv  # noqa: E402
from src import pair_sums  # noqa: E402
from src.data import DataBundle, Split  # noqa: E402
from src.evaluate import importance_sampled_nll  # noqa: E402
from src.models import Autoencoder, build_model  # noqa: E402
from src.schema import ModelConfig, PriorConfig  # noqa: E402
from src.settings import (
    TrainSettings,  # noqa: E402
    resolve_device,  # noqa: E402
)
from src.train import fit  # noqa: E402

SHAPE = (1, 28, 28)
LOAD_AT_START = os.getloadavg()
OUT = ROOT / "benchmarks" / "results"


def make_model(model: str, prior: str, k: int, device) -> Autoencoder:
    mc = ModelConfig(name=model)
    pc = PriorConfig(name=prior, K=1 if prior == "standard" else k)
    if prior == "standard":
        pc.train = False
    torch.manual_seed(0)
    return build_model(mc, pc, SHAPE).to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# On CPU the clock is this process's CPU time (time.process_time): with one torch thread it does not
# count the time other jobs on a shared machine take the core away. On CUDA, wall-clock time.
CLOCK = time.perf_counter


def timed(fn, device, n: int) -> float:
    """Seconds per call of fn, averaged over n calls (after the caller's warm-up)."""
    sync(device)
    t0 = CLOCK()
    for _ in range(n):
        fn()
    sync(device)
    return (CLOCK() - t0) / n


def step_fn(model: Autoencoder, x: torch.Tensor, reg=None, reference: bool = False, tiles: bool = False):
    """One optimiser step. reference=True: the code before the fused path, i.e. the broadcast reference
    math (dv.reference_math) and a VampPrior's pseudo-inputs encoded in a second encoder call.
    tiles=True: the fused path without the native loops (src/pair_sums.py's torch tiles alone)."""
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)

    def loss():
        if reg is not None:  # same step, with the regulariser computed by `reg`
            mu, logvar = model.encode(x)
            z = model.reparameterise(mu, logvar)
            return (-model.log_likelihood(x, model.decode(z)) + reg(model, mu, logvar)).mean()
        if tiles:
            with pair_sums.torch_tiles_only():
                return model.loss_terms(x).total(1.0)
        if not reference:
            return model.loss_terms(x).total(1.0)
        with dv.reference_math():
            mu, logvar = model.encode(x)
            z = model.reparameterise(mu, logvar)
            return (-model.log_likelihood(x, model.decode(z)) + model.regulariser(mu, logvar, z)).mean()

    def step():
        value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    return step


def naive_cs(model: Autoencoder, mu, logvar):
    """D_CS(q_b || p) per sample, one (sample, component) pair at a time: the straightforward loops."""
    logits, p_mu, p_lv = model.prior_components()
    k = p_mu.shape[0]
    lw = dv.log_weights(logits, k, p_mu)
    prior_self_terms = [
        lw[i] + lw[j] + dv.log_gaussian_overlap(p_mu[i], p_lv[i], p_mu[j], p_lv[j]) for i in range(k) for j in range(k)
    ]
    prior_self = torch.logsumexp(torch.stack(prior_self_terms), 0)
    out = []
    for b in range(mu.shape[0]):
        cross = torch.logsumexp(
            torch.stack([lw[i] + dv.log_gaussian_overlap(mu[b], logvar[b], p_mu[i], p_lv[i]) for i in range(k)]), 0
        )
        q_self = dv.log_gaussian_self_integral(logvar[b])
        out.append(-cross + 0.5 * prior_self + 0.5 * q_self)
    return torch.stack(out)


def vectorised_cs(model: Autoencoder, mu, logvar):
    logits, p_mu, p_lv = model.prior_components()
    return dv.cs_divergence(mu, logvar, p_mu, p_lv, logits)


def ratio_stats(num: list[float], den: list[float]) -> dict:
    r = [a / b for a, b in zip(num, den)]
    return {
        "ratio": statistics.median(r),
        "ratio_min": min(r),
        "ratio_max": max(r),
        "reps": len(r),
        "num_ms": 1e3 * statistics.median(num),
        "den_ms": 1e3 * statistics.median(den),
    }


def compared_steps(cs_model: Autoencoder, mc_model: Autoencoder, x: torch.Tensor) -> dict:
    """The steps each K compares: CSRAE fused, reference and torch tiles only; the VAE with a Monte-Carlo
    KL to the same prior, fused and reference."""
    return {
        "cs": step_fn(cs_model, x),
        "cs_ref": step_fn(cs_model, x, reference=True),
        "cs_tiles": step_fn(cs_model, x, tiles=True),
        "mc": step_fn(mc_model, x),
        "mc_ref": step_fn(mc_model, x, reference=True),
    }


def bench_steps(device, reps: int, steps: int, ks, vamp_ks=(50, 500)) -> list[dict]:
    """Every step ratio twice, side by side in the same repetitions: the fused path (the default) and the
    reference path (broadcast math, VampPrior encoded in two calls: the code before the fused path)."""
    rows = []
    x = torch.bernoulli(torch.rand(100, *SHAPE, generator=torch.Generator().manual_seed(0))).to(device)
    vae_std = step_fn(make_model("vae", "standard", 1, device), x)
    for f in (vae_std,) * 3:
        f()

    def measure(k, steps_by_name):
        for f in steps_by_name.values():
            f()
        n = steps if k <= 50 else max(1, steps // 6)
        t = {name: [] for name in steps_by_name}
        for _ in range(reps):  # interleaved: every variant once per repetition
            for name, f in steps_by_name.items():
                t[name].append(timed(f, device, n))
        return t

    def row(measure_name, setting, num, den, target=""):
        add_ratio_row(rows, measure_name, setting, num, den, target)

    for k in ks:
        cs_model, mc_model = make_model("csrae", "gmm", k, device), make_model("vae", "gmm", k, device)
        t = measure(k, {"std": vae_std, **compared_steps(cs_model, mc_model, x)})
        target = {50: "<= 1.10", 500: "<= 3.0 (stretch 2.0)"}.get(k, "")
        row(
            "(a) step csrae / vae",
            f"K={k}; csrae+gmm vs vae+standard (closed-form KL); fused",
            t["cs"],
            t["std"],
            target,
        )
        row(
            "(a) step csrae / vae",
            f"K={k}; csrae+gmm vs vae+standard (closed-form KL); torch tiles only (no native loops)",
            t["cs_tiles"],
            t["std"],
        )
        row(
            "(a) step csrae / vae",
            f"K={k}; csrae+gmm vs vae+standard (closed-form KL); reference (before)",
            t["cs_ref"],
            t["std"],
        )
        row("(a') step csrae / vae", f"K={k}; csrae+gmm vs vae+gmm (MC KL, same prior); fused", t["cs"], t["mc"])
        row(
            "(a') step csrae / vae",
            f"K={k}; csrae+gmm vs vae+gmm (MC KL, same prior); reference (before)",
            t["cs_ref"],
            t["mc_ref"],
        )
        if k >= 50:
            row("(a*) step fused / reference", f"K={k}; csrae+gmm, the same model", t["cs"], t["cs_ref"])
    for k in vamp_ks:  # the VampPrior: both objectives pay for encoding the K pseudo-inputs every step
        cs_model, mc_model = make_model("csrae", "vamp", k, device), make_model("vae", "vamp", k, device)
        t = measure(k, {"std": vae_std, **compared_steps(cs_model, mc_model, x)})
        row(
            "(a'') step csrae / vae",
            f"K={k}; csrae+vamp vs vae+vamp (MC KL); fused, one encoder call",
            t["cs"],
            t["mc"],
            "<= 1.5" if k == 500 else "",
        )
        row(
            "(a'') step csrae / vae",
            f"K={k}; csrae+vamp vs vae+vamp (MC KL); torch tiles only (no native loops)",
            t["cs_tiles"],
            t["mc"],
        )
        row(
            "(a'') step csrae / vae",
            f"K={k}; csrae+vamp vs vae+vamp (MC KL); reference (before)",
            t["cs_ref"],
            t["mc_ref"],
        )
        row(
            "(v) step vae+vamp / vae+standard",
            f"K={k}; fused, one encoder call",
            t["mc"],
            t["std"],
            "report" if k == 500 else "",
        )
        row("(v) step vae+vamp / vae+standard", f"K={k}; reference (before: two encoder calls)", t["mc_ref"], t["std"])
    return rows


def rss_probe(variant: str, k: int) -> None:
    """In a fresh process: peak resident memory (VmHWM) of one csrae+gmm K=k training step, in MiB, and
    how much the step added to the peak."""

    def peak_mib() -> float:
        line = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    x = torch.bernoulli(torch.rand(100, *SHAPE, generator=torch.Generator().manual_seed(0)))
    step = step_fn(make_model("csrae", "gmm", k, torch.device("cpu")), x, reference=variant == "reference")
    before = peak_mib()
    step()
    after = peak_mib()
    print(f"{after:.1f} {after - before:.1f}")


def bench_memory(k: int = 1000) -> list[dict]:
    """Peak RSS (MiB, in the ratio column) of a fresh process after one K=k step, fused and reference."""
    rows = []
    for variant in ("fused", "reference"):
        out = subprocess.run(
            [sys.executable, __file__, "--rss-probe", variant, "--rss-k", str(k)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        peak, growth = float(out[0]), float(out[1])
        rows.append(
            {
                "measure": "(m) peak RSS of one step, MiB",
                "setting": f"K={k}; csrae+gmm, batch 100, D=40; {variant}; the step itself added {growth:.0f} MiB",
                "target": "report",
                "ratio": peak,
                "ratio_min": peak,
                "ratio_max": peak,
                "reps": 1,
                "num_ms": float("nan"),
                "den_ms": float("nan"),
            }
        )
        print(f"(m) peak RSS, K={k}, {variant}: {peak:.0f} MiB (the step added {growth:.0f} MiB)", flush=True)
    return rows


def bench_threads(reps: int, k: int = 500, steps: int = 3) -> list[dict]:
    """Wall-clock time of the same steps on 2 torch threads vs 1, interleaved (CPU only)."""
    x = torch.bernoulli(torch.rand(100, *SHAPE, generator=torch.Generator().manual_seed(0)))
    rows = []
    for label, model in (
        (f"csrae+gmm K={k}", make_model("csrae", "gmm", k, torch.device("cpu"))),
        ("vae+standard", make_model("vae", "standard", 1, torch.device("cpu"))),
    ):
        f = step_fn(model, x)
        f()
        t1, t2 = [], []
        for _ in range(reps):
            for threads, out in ((1, t1), (2, t2)):
                torch.set_num_threads(threads)
                t0 = time.perf_counter()
                for _ in range(steps):
                    f()
                out.append((time.perf_counter() - t0) / steps)
        torch.set_num_threads(1)
        add_ratio_row(
            rows,
            "(f) step 2 threads / 1 thread",
            f"{label}, wall clock, {os.cpu_count()} cores shared with other jobs",
            t2,
            t1,
            "",
        )
    return rows


def bench_naive(device, reps: int, ks) -> list[dict]:
    rows = []
    x = torch.bernoulli(torch.rand(100, *SHAPE, generator=torch.Generator().manual_seed(0))).to(device)
    for k in ks:
        model = make_model("csrae", "gmm", k, device)
        naive, vec = step_fn(model, x, naive_cs), step_fn(model, x, vectorised_cs)
        naive(), vec()
        steps_naive = max(1, 20 // k)
        t_n, t_v = [], []
        for _ in range(reps):
            t_n.append(timed(naive, device, steps_naive))
            t_v.append(timed(vec, device, 10))
        add_ratio_row(rows, "(b) step naive loop CS / vectorised CS", f"K={k}, batch 100 (csrae+gmm)", t_n, t_v, "")
    return rows


def bare_epoch(model, data: DataBundle, batch: int, device, seed: int = 0):
    """The practical limit: shuffle, binarise, forward, backward, step; then the validation loss."""
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    g = torch.Generator().manual_seed(seed)
    x_train, n = data.train.x, data.train.x.shape[0]
    model.train()
    perm = torch.randperm(n, generator=g)
    for i in range(0, n, batch):
        xb = torch.bernoulli(x_train[perm[i : i + batch]], generator=g).to(device)
        loss = model.loss_terms(xb).total(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        val = sum(
            model.loss_terms(data.val.x[i : i + 500].to(device)).total(1.0).item() * len(data.val.x[i : i + 500])
            for i in range(0, data.val.x.shape[0], 500)
        )
    return val


def bench_trainer(device, reps: int, n_train: int) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    n_val = n_train // 5  # MNIST: 50k / 10k
    data = DataBundle(
        "synthetic",
        Split(torch.rand(n_train, *SHAPE, generator=g), torch.zeros(n_train, dtype=torch.long)),
        Split(torch.bernoulli(torch.rand(n_val, *SHAPE, generator=g)), torch.zeros(n_val, dtype=torch.long)),
        Split(torch.zeros(1, *SHAPE), torch.zeros(1, dtype=torch.long)),
        SHAPE,
        True,
        10,
    )
    rows = []
    for label, ckpt in (("defaults (checkpoints + metrics.csv)", True), ("checkpoint=false", False)):
        t_h, t_b = [], []
        for rep in range(reps + 1):
            with tempfile.TemporaryDirectory() as tmp:
                model = make_model("csrae", "gmm", 10, device)
                opt = torch.optim.Adam(model.parameters(), lr=5e-4)
                s = TrainSettings(
                    epochs=1, batch_size=100, reg_weight=1.0, checkpoint=ckpt, resume=False, progress=False
                )
                sync(device)
                t0 = CLOCK()
                fit(model, data, opt, s, Path(tmp), device)
                sync(device)
                th = CLOCK() - t0
            model = make_model("csrae", "gmm", 10, device)
            sync(device)
            t0 = CLOCK()
            bare_epoch(model, data, 100, device)
            sync(device)
            tb = CLOCK() - t0
            if rep:  # the first repetition warms up
                t_h.append(th), t_b.append(tb)
        add_ratio_row(
            rows,
            "(c) epoch harness fit / bare loop",
            f"{label}; {n_train} train + {n_val} val points, batch 100, csrae+gmm K=10",
            t_h,
            t_b,
            "<= 1.10" if ckpt else "",
        )
    return rows


@torch.no_grad()
def per_point_nll(model: Autoencoder, x: torch.Tensor, samples: int, chunk: int, device) -> torch.Tensor:
    """The VampPrior / pythae way: one test point at a time, its S samples in chunks of `chunk`."""
    logits, p_mu, p_lv = model.prior_components()
    out = []
    for i in range(x.shape[0]):
        xi = x[i : i + 1].to(device)
        mu, logvar = model.encode(xi)
        log_w = []
        for start in range(0, samples, chunk):
            s = min(chunk, samples - start)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(s, mu.shape[1], device=device)
            log_px_z = model.log_likelihood(xi.expand(s, *xi.shape[1:]), model.decode(z))
            log_w.append(log_px_z + dv.log_mixture_density_matmul(z, logits, p_mu, p_lv) - dv.log_normal(z, mu, logvar))
        out.append(-(torch.logsumexp(torch.cat(log_w), 0) - math.log(samples)))
    return torch.stack(out)


def bench_is(device, reps: int, n_points: int, samples: int) -> list[dict]:
    model = make_model("csrae", "gmm", 10, device).eval()
    x = torch.bernoulli(torch.rand(n_points, *SHAPE, generator=torch.Generator().manual_seed(2)))
    vec = lambda: importance_sampled_nll(model, x, n_samples=samples, device=device)  # noqa: E731
    pp_100 = lambda: per_point_nll(model, x, samples, 100, device)  # noqa: E731
    pp_all = lambda: per_point_nll(model, x, samples, samples, device)  # noqa: E731
    vec(), pp_100()
    t_v, t_p, t_s = [], [], []
    for _ in range(reps):
        t_v.append(timed(vec, device, 1))
        t_p.append(timed(pp_100, device, 1))
        t_s.append(timed(pp_all, device, 1))
    rows = [
        {
            "measure": "(d) IS-NLL vectorised / per point",
            "setting": f"S={samples}, {n_points} points; per point in chunks of 100 samples (VampPrior / pythae)",
            "target": "<= 0.10",
            **ratio_stats(t_v, t_p),
        },
        {
            "measure": "(d') IS-NLL vectorised / per point",
            "setting": f"S={samples}, {n_points} points; per point, all {samples} samples in one chunk",
            "target": "",
            **ratio_stats(t_v, t_s),
        },
    ]
    for r in rows:
        print_row(r)
    return rows


def add_ratio_row(rows: list[dict], measure: str, setting: str, num: list[float], den: list[float], target: str = ""):
    """One measured ratio num / den (ratio_stats) appended to rows, and printed."""
    rows.append({"measure": measure, "setting": setting, "target": target, **ratio_stats(num, den)})
    print_row(rows[-1])


def print_row(r: dict) -> None:
    print(
        f"{r['measure']:42s} {r['setting'][:70]:70s} ratio {r['ratio']:.3f} "
        f"[{r['ratio_min']:.3f}, {r['ratio_max']:.3f}] ({r['num_ms']:.2f} / {r['den_ms']:.2f} ms, {r['reps']} reps)",
        flush=True,
    )


def kept_rows(only: str, device) -> list[dict]:
    """The rows of the existing table whose measurement (the letter in "(a')") is not in `only`."""
    path = OUT / ("speed_cuda.csv" if device.type == "cuda" else "speed.csv")
    if not path.exists():
        return []
    with open(path, newline="") as f:
        old = [r for r in csv.DictReader(f) if r["measure"][1] not in only]
    numeric = ("ratio", "ratio_min", "ratio_max", "num_ms", "den_ms")
    return [
        {**r, **{c: float(r[c]) for c in numeric}, "reps": int(r["reps"]), "measured": r.get("measured") or "earlier"}
        for r in old
    ]


def write(rows: list[dict], device, threads: int, args) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    cols = ["measure", "setting", "ratio", "ratio_min", "ratio_max", "reps", "num_ms", "den_ms", "target", "measured"]
    name = "speed_cuda" if device.type == "cuda" else "speed"
    with open(OUT / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    dev = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({cpu_name()}), {threads} torch thread(s)"
    lines = [
        "# Speed ratios (one process; median over repetitions, [min, max] spread)",
        "",
        f"- generated: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit_stamp()}, "
        f"`python benchmarks/speed.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- machine: {platform.node()}, {os.cpu_count()} cores shared with other jobs; device: {dev}; "
        f"torch {torch.__version__}",
        f"- load average when it started (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in LOAD_AT_START)}; ratios "
        "come from interleaved repetitions in one process",
        f"- clock: {'process CPU time (one thread; not counting time other jobs hold the core)' if CLOCK is time.process_time else 'wall clock'}",
        "- num_ms / den_ms: median time of the numerator / denominator (a step, an epoch, or a whole IS-NLL pass)",
        "- (e) joblib sweep 2 workers / 1 worker: see [sweep_parallel.md](sweep_parallel.md) "
        "(benchmarks/sweep_parallel.py)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        lines.append(
            "| " + " | ".join(f"{r[c]:.3f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols) + " |"
        )
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT / name}.md and .csv")


def main() -> None:
    ap = argparse.ArgumentParser(description="speed ratios (see the module docstring)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="3 repetitions, smaller workloads")
    ap.add_argument("--only", default="abcdmf", help="which measurements, e.g. 'ad' (m: memory, f: threads)")
    ap.add_argument(
        "--keep-others", action="store_true", help="keep the rows of the measurements not rerun from the existing table"
    )
    ap.add_argument("--rss-probe", choices=("fused", "reference"), help=argparse.SUPPRESS)
    ap.add_argument("--rss-k", type=int, default=1000, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_probe:
        torch.set_num_threads(1)
        return rss_probe(args.rss_probe, args.rss_k)
    global CLOCK
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cpu" and args.threads == 1:
        CLOCK = time.process_time
    reps = 3 if args.quick else args.reps
    rows = []
    if "a" in args.only:
        rows += bench_steps(device, reps, 5 if args.quick else 20, (1, 10, 50, 500))
    if "b" in args.only:
        rows += bench_naive(device, reps, (1, 10) if args.quick else (1, 10, 50))
    if "c" in args.only:
        rows += bench_trainer(device, min(reps, 5), 2000 if args.quick else 10000)
    if "d" in args.only:
        rows += bench_is(device, reps if not args.quick else 2, 20 if args.quick else 100, 1000)
    if "m" in args.only and device.type == "cpu":
        rows += bench_memory()
    if "f" in args.only and device.type == "cpu":
        rows += bench_threads(reps)
    stamp = (
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        + " "
        + subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    )
    for r in rows:  # which run each row comes from, since --keep-others mixes runs
        r["measured"] = stamp
    if args.keep_others:
        rows = kept_rows(args.only, device) + rows
    write(rows, device, args.threads, args)


if __name__ == "__main__":
    main()
