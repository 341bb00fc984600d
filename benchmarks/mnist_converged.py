"""The converged MNIST study (issue 10): a queue of named runs, each an experiment file
(conf/experiment/) plus overrides, trained with the harness until it stops early, resumable.

    python benchmarks/mnist_converged.py --list             # the plan and each run's state
    python benchmarks/mnist_converged.py --run              # train whatever is unfinished, one at a time
    python benchmarks/mnist_converged.py --run --parallel 2 # two at a time (one thread each)
    python benchmarks/mnist_converged.py --csv              # collect finished runs, rebuild the tables and report
    python benchmarks/mnist_converged.py --paired A B       # paired per-test-point NLL difference of two runs
    nohup python benchmarks/mnist_converged.py --run --parallel 2 > ~/csrae-runs/queue.log 2>&1 &

Run directories live outside the work tree (they survive a new checkout): --runs-dir, or the
environment variable CSRAE_RUNS_DIR, default ~/csrae-runs/mnist_converged. A run is picked up again
from its checkpoints/last.pt whenever it is unfinished and no process is training it (a process
whose command line names its hydra.run.dir). MNIST is read from MNIST_ROOT (default ../shared/data).

Each finished run's results.json, metrics.csv (pretrain_metrics.csv) and .hydra/{config,overrides}.yaml
are copied to benchmarks/results/mnist_converged_runs/<name>/ (small files, to commit), and
benchmarks/results/mnist_converged.csv gets one row per planned run (unfinished rows have empty
results; mnist_converged_plan.csv says why). `python -m src.report` over the copies writes the report
to benchmarks/results/mnist_converged/.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COPIES = RESULTS / "mnist_converged_runs"  # beside the report dir: the report writes only into its own
TABLE = RESULTS / "mnist_converged.csv"
PLAN_TABLE = RESULTS / "mnist_converged_plan.csv"
DATA_ROOT = os.environ.get("MNIST_ROOT", str((ROOT / ".." / "shared" / "data").resolve()))
DEFAULT_RUNS = Path(os.environ.get("CSRAE_RUNS_DIR", "~/csrae-runs/mnist_converged")).expanduser()

COMMON = [f"dataset.root={DATA_ROOT}", "trainer.threads=1", "trainer.progress=false"]

# Provisional tuned csrae weight: a 20-epoch scan of λ = 1 … 4 on MNIST (docs/MATH.md, "Why λ = 1 is not
# CSRAE's KL-equivalent weight"); λ = 1 is the paper's default.
LAMBDA = 3
KAPPA = 60  # GECO reconstruction target, nats: about where a converged vae+standard reconstructs (provisional)

D, C = "mnist_density", "mnist_clustering"


def _gmm(k: int) -> list[str]:
    return ["prior=gmm", f"prior.K={k}"]


def _csrae(lam: float) -> list[str]:
    return ["model=csrae", f"model.reg_weight={lam}"]


GECO = ["model.constraint=reconstruction", f"model.target_recon={KAPPA}"]

# (name, experiment, overrides) in priority order. vae_standard_s0 was started by hand before this
# file with explicit overrides; mnist_density + these composes to the same checkpoint fingerprint
# (tests/test_experiments.py), so it resumes.
PLAN = [
    ("csrae_gmm10_l3_s0", D, [*_csrae(LAMBDA), *_gmm(10)]),
    ("vae_gmm10_s0", D, ["model=vae", *_gmm(10)]),
    ("vae_standard_s0", D, ["model=vae", "prior=standard"]),
    ("clu_csrae_gmm10_s0", C, [*_csrae(LAMBDA)]),
    ("clu_vae_gmm10_s0", C, ["model=vae"]),
    ("csrae_gmm10_l1_s0", D, [*_csrae(1), *_gmm(10)]),
    ("vae_gmm10_geco_s0", D, ["model=vae", *_gmm(10), *GECO]),
    ("csrae_gmm10_geco_s0", D, [*_csrae(LAMBDA), *_gmm(10), *GECO]),
    ("vae_gmm50_s0", D, ["model=vae", *_gmm(50)]),
    ("csrae_gmm50_l3_s0", D, [*_csrae(LAMBDA), *_gmm(50)]),
    ("csrae_gmm50_l1_s0", D, [*_csrae(1), *_gmm(50)]),
    ("vae_vamp500_s0", D, ["model=vae", "prior=vamp", "prior.K=500"]),
    ("csrae_vamp500_l3_s0", D, [*_csrae(LAMBDA), "prior=vamp", "prior.K=500"]),
    ("vae_standard_s1", D, ["model=vae", "prior=standard", "trainer.seed=1"]),
    ("csrae_gmm10_l3_s1", D, [*_csrae(LAMBDA), *_gmm(10), "trainer.seed=1"]),
    ("vae_gmm10_s1", D, ["model=vae", *_gmm(10), "trainer.seed=1"]),
    ("clu_csrae_gmm10_s1", C, [*_csrae(LAMBDA), "trainer.seed=1"]),
    ("clu_vae_gmm10_s1", C, ["model=vae", "trainer.seed=1"]),
    ("clu_csrae_gmm10_s2", C, [*_csrae(LAMBDA), "trainer.seed=2"]),
    ("clu_vae_gmm10_s2", C, ["model=vae", "trainer.seed=2"]),
]

# Why a planned run has no result yet, in mnist_converged_plan.csv (the queue runs them in PLAN order).
NOT_RUN = (
    "not run yet: CPU time (one converged run takes 1.5-3 h of a core here, two at a time, and run "
    "dirs do not survive between sessions); rerun the queue to train it"
)

COLUMNS = [
    "configuration",
    "model",
    "prior",
    "K",
    "reg_weight",
    "constraint",
    "seed",
    "epochs_run",
    "stopped_early",
    "test_nll",
    "test_nll_sem",
    "is_samples",
    "n_test",
    "acc",
    "nmi",
    "ari",
    "fewlabel_lr_10",
    "fewlabel_comp_10",
]
COPIED = ["results.json", "metrics.csv", "pretrain_metrics.csv", ".hydra/config.yaml", ".hydra/overrides.yaml"]


def command(name: str, experiment: str, overrides: list[str], runs: Path, epochs: int | None = None) -> list[str]:
    """The run's command line; epochs caps trainer.epochs below the protocol's 2000 (not part of the
    checkpoint fingerprint, so a capped run can be extended later with a larger cap)."""
    cap = [f"trainer.epochs={epochs}"] if epochs else []
    return [
        sys.executable,
        "-m",
        "src.run",
        f"experiment={experiment}",
        *overrides,
        *COMMON,
        *cap,
        f"hydra.run.dir={runs / name}",
    ]


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def active(run_dir: Path) -> bool:
    """Whether a process on this machine is training run_dir (its command line names it)."""
    needle = f"hydra.run.dir={run_dir} ".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (proc / "cmdline").read_bytes().replace(b"\0", b" ") + b" ":
                return True
        except OSError:
            continue
    return False


def _epochs_done(run_dir: Path) -> int:
    try:
        with open(run_dir / "metrics.csv") as f:
            return sum(1 for _ in f) - 1
    except OSError:
        return 0


def state(name: str, runs: Path) -> tuple[str, str]:
    """(state, reason): done | training | resumable | failed | todo."""
    d = runs / name
    r = _json(d / "results.json")
    if r is not None and r.get("status") == "completed":
        return "done", ""
    if (COPIES / name / "results.json").exists() and not d.exists():
        return "done", "collected copy (run dir not on this machine)"
    if active(d):
        return "training", f"{_epochs_done(d)} epochs so far"
    if r is not None and r.get("status") == "failed":
        return "failed", str(r.get("error"))
    if (d / "checkpoints" / "last.pt").exists():
        return "resumable", f"stopped after {_epochs_done(d)} epochs ({(r or {}).get('status', 'no results.json')})"
    return "todo", "not started"


def _log(msg: str) -> None:
    print(time.strftime("%Y-%m-%d %H:%M:%S ", time.gmtime()) + msg, flush=True)


def collect(name: str, runs: Path) -> None:
    """Copy a finished run's small files into benchmarks/results/mnist_converged/runs/<name>/."""
    src, dst = runs / name, COPIES / name
    for rel in COPIED:
        if (src / rel).exists():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)


def _planned_config(experiment: str, overrides: list[str]) -> dict:
    """model, prior, K, reg_weight, constraint and seed of a planned run, from its composed config."""
    sys.path.insert(0, str(ROOT))
    from src.config import compose_config

    cfg = compose_config(f"experiment={experiment}", *overrides)
    v = lambda x: getattr(x, "value", x)  # noqa: E731
    return {
        "model": v(cfg.model.name),
        "prior": v(cfg.prior.name),
        "K": cfg.prior.K,
        "reg_weight": cfg.model.reg_weight,
        "constraint": v(cfg.model.constraint),
        "target_recon": cfg.model.target_recon,
        "seed": cfg.trainer.seed,
    }


def _constraint(r: dict) -> str:
    if r.get("constraint") in (None, "none"):
        return "none"
    return f"recon<={r.get('target_recon')}"


def build_tables(runs: Path) -> None:
    """mnist_converged.csv (one row per planned run, exactly COLUMNS) and mnist_converged_plan.csv."""
    rows, plan_rows = [], []
    for name, experiment, overrides in PLAN:
        st, reason = state(name, runs)
        r = _json(COPIES / name / "results.json") if st == "done" else None
        if r is None and st == "done":
            r = _json(runs / name / "results.json")
        base = r if r is not None else _planned_config(experiment, overrides)
        row = {
            "configuration": f"{experiment}:{name.rsplit('_s', 1)[0]}",
            **{k: base.get(k) for k in COLUMNS[1:]},
            "constraint": _constraint(base),
        }
        if r is None:  # planned, not finished: no results, progress only
            row.update({k: None for k in COLUMNS[7:]}, epochs_run=_epochs_done(runs / name) or None)
        rows.append(row)
        plan_rows.append(
            {
                "name": name,
                "experiment": experiment,
                "overrides": " ".join(overrides),
                "state": st,
                "reason": NOT_RUN if st == "todo" else reason,
            }
        )
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    for path, fields, data in ((TABLE, COLUMNS, rows), (PLAN_TABLE, list(plan_rows[0]), plan_rows)):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(data)


def report() -> None:
    """python -m src.report over the collected copies -> benchmarks/results/mnist_converged/."""
    if any(COPIES.glob("*/results.json")):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "src.report",
                str(COPIES),
                "--out",
                str(RESULTS),
                "--name",
                "mnist_converged",
                "--quiet",
            ],
            cwd=ROOT,
        )


PAIRED = RESULTS / "mnist_converged_paired.csv"
PAIRED_COLUMNS = [
    "a",
    "b",
    "is_samples",
    "n_test",
    "is_seed",
    "nll_a",
    "nll_b",
    "diff",
    "diff_sem",
    "ci95_lo",
    "ci95_hi",
    "p_value",
]


def paired(a: str, b: str, runs: Path, samples: int, seed: int = 1234) -> dict:
    """Per-test-point paired NLL difference a − b on all 10 000 test points: both runs' models
    (src.finished_runs.load_model) are evaluated by benchmarks/mnist_eval.py with the same importance-sampling
    noise (one seed), in parallel; the mean difference gets a t-based 95% CI over test points (scipy's
    paired t-test). This is the uncertainty of the evaluation given the two trained models, not over
    training seeds. One row per pair in mnist_converged_paired.csv (replaced when rerun)."""
    from scipy import stats

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = f"paired_eval_s{samples}_seed{seed}.json"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "mnist_eval.py"),
                str(runs / n),
                "--samples",
                str(samples),
                "--n-test",
                "10000",
                "--seed",
                str(seed),
                "--out",
                out,
            ],
            cwd=ROOT,
            env=env,
        )
        for n in (a, b)
        if not (runs / n / out).exists()
    ]
    if any(p.wait() != 0 for p in procs):
        sys.exit(f"error: an evaluation failed (see above); nothing written to {PAIRED}")
    ev = {n: json.loads((runs / n / out).read_text()) for n in (a, b)}
    x, y = (np.asarray(ev[n]["per_point_nll"]) for n in (a, b))
    d = x - y
    sem = d.std(ddof=1) / math.sqrt(len(d))
    half = stats.t.ppf(0.975, len(d) - 1) * sem
    row = {
        "a": a,
        "b": b,
        "is_samples": samples,
        "n_test": len(d),
        "is_seed": seed,
        "nll_a": round(x.mean(), 3),
        "nll_b": round(y.mean(), 3),
        "diff": round(d.mean(), 3),
        "diff_sem": round(sem, 3),
        "ci95_lo": round(d.mean() - half, 3),
        "ci95_hi": round(d.mean() + half, 3),
        "p_value": float(f"{stats.ttest_rel(x, y).pvalue:.3g}"),
    }
    rows = []
    if PAIRED.exists():
        with open(PAIRED, newline="") as f:
            rows = [r for r in csv.DictReader(f) if (r["a"], r["b"], r["is_samples"]) != (a, b, str(samples))]
    with open(PAIRED, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=PAIRED_COLUMNS)
        w.writeheader()
        w.writerows([*rows, row])
    print(
        f"{a} − {b}: {row['diff']:+.3f} nats (95% CI {row['ci95_lo']:+.3f} … {row['ci95_hi']:+.3f}, "
        f"p = {row['p_value']:.3g}; S={samples}, {len(d)} test points) -> {PAIRED}"
    )
    return row


def run_queue(runs: Path, parallel: int, only: list[str] | None, epochs: int | None = None) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    running: dict[str, subprocess.Popen] = {}
    failed: set[str] = set()
    while True:
        for name, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            if proc.returncode == 0:
                collect(name, runs)
                build_tables(runs)
                _log(f"finished {name}")
            else:
                failed.add(name)
                _log(f"FAILED {name} (rc {proc.returncode}); see {runs / (name + '.log')}")
        todo = [
            (n, e, ov)
            for n, e, ov in PLAN
            if n not in running
            and n not in failed
            and (not only or n in only)
            and state(n, runs)[0] in ("todo", "resumable")
        ]
        while todo and len(running) < parallel:
            name, experiment, overrides = todo.pop(0)
            _log(f"start {name}: experiment={experiment} {' '.join(overrides)}")
            log = open(runs / f"{name}.log", "a")
            running[name] = subprocess.Popen(
                command(name, experiment, overrides, runs, epochs),
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if not running:
            break
        time.sleep(10)
    build_tables(runs)
    report()
    _log("queue empty" + (f"; failed: {sorted(failed)}" if failed else ""))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="the plan and each run's state")
    what.add_argument("--run", action="store_true", help="train what is unfinished (resuming), then collect")
    what.add_argument("--csv", action="store_true", help="collect finished runs, rebuild the tables and the report")
    what.add_argument(
        "--paired", nargs=2, metavar=("A", "B"), help="paired per-test-point NLL difference A − B of two finished runs"
    )
    ap.add_argument("--samples", type=int, default=1000, help="--paired: importance samples per point (default 1000)")
    ap.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS, help=f"run directories (default {DEFAULT_RUNS})")
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1)")
    ap.add_argument("--only", nargs="*", help="only these run names")
    ap.add_argument("--epochs", type=int, help="cap trainer.epochs (a session's budget; the protocol allows 2000)")
    args = ap.parse_args(argv)
    runs = args.runs_dir.expanduser().resolve()
    runs.mkdir(parents=True, exist_ok=True)
    if args.list:
        for name, experiment, overrides in PLAN:
            st, reason = state(name, runs)
            print(
                f"{st:10s} {name:22s} experiment={experiment} {' '.join(overrides)}"
                + (f"  [{reason}]" if reason else "")
            )
    elif args.run:
        run_queue(runs, max(1, args.parallel), args.only, args.epochs)
    elif args.paired:
        paired(*args.paired, runs, args.samples)
    else:
        for name, _, _ in PLAN:
            if state(name, runs)[0] == "done" and (runs / name).exists():
                collect(name, runs)
        build_tables(runs)
        report()
        print(f"wrote {TABLE} and {PLAN_TABLE}")


if __name__ == "__main__":
    main()
