"""The converged MNIST study: a queue of named runs, each an experiment file (conf/experiment/) plus
overrides, trained with the harness until it stops early, resumable.

    python benchmarks/mnist_converged.py --list             # the plan and each run's state
    python benchmarks/mnist_converged.py --run              # train whatever is unfinished, one at a time
                                                            # (started runs first, then the plan's order)
    python benchmarks/mnist_converged.py --run --parallel 2 # two at a time (one thread each)
    python benchmarks/mnist_converged.py --csv              # collect finished runs, rebuild the tables and report
    python benchmarks/mnist_converged.py --paired A B       # paired per-test-point NLL difference of two finished runs
    nohup python benchmarks/mnist_converged.py --run --parallel 2 > ~/csrae-runs/queue.log 2>&1 &

Run directories live outside the work tree (they survive a new checkout): --runs-dir, or the
environment variable CSRAE_RUNS_DIR, default ~/csrae-runs/mnist_converged. A run is picked up again
from its checkpoints/last.pt whenever it is unfinished (or completed at a session's --epochs cap
below its planned epochs) and no process is training it (a process whose command line names its
hydra.run.dir). MNIST is read from MNIST_ROOT (default ../shared/data).

Each finished run's results.json, metrics.csv (pretrain_metrics.csv) and .hydra/{config,overrides}.yaml
are copied to benchmarks/results/mnist_converged_runs/<name>/ (small files, to commit), and
benchmarks/results/mnist_converged.csv gets one row per planned run (unfinished rows have empty
results; mnist_converged_plan.csv says why). `python -m src.report` over the copies writes the report
to benchmarks/results/mnist_converged/.

CSRAE's λ is chosen on validation data only: the csrae rows take model.reg_weight from the λ search's
trial with the lowest val_nll (benchmarks/results/mnist_lambda_search.csv, columns including reg_weight
and val_nll). Until that file exists they wait: listed as waiting in mnist_converged_plan.csv, skipped
by the queue.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py: what the benchmarks share
from common import read_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COPIES = RESULTS / "mnist_converged_runs"  # beside the report dir: the report writes only into its own
TABLE = RESULTS / "mnist_converged.csv"
PLAN_TABLE = RESULTS / "mnist_converged_plan.csv"
DATA_ROOT = os.environ.get("MNIST_ROOT", str((ROOT / ".." / "shared" / "data").resolve()))
DEFAULT_RUNS = Path(os.environ.get("CSRAE_RUNS_DIR", "~/csrae-runs/mnist_converged")).expanduser()

COMMON = [f"dataset.root={DATA_ROOT}", "trainer.threads=1", "trainer.progress=false"]

# The λ search: its trials (one row each; columns include reg_weight and val_nll). The csrae rows train
# at the reg_weight of its trial with the lowest val_nll (chosen_lambda).
LAMBDA_SEARCH = RESULTS / "mnist_lambda_search.csv"
LAMBDA_SWEEP = ROOT / "conf" / "sweep" / "csrae_lambda.yaml"  # the search's space and budget
# Stands for model.reg_weight=<that λ> in a row's overrides (resolve); shown as is in the plan table.
CHOSEN_LAMBDA = "model.reg_weight=<λ-search>"
POLL_S = 10  # run_queue: seconds between looks at the running jobs
KAPPA = 60  # GECO reconstruction target, nats: about where a converged vae+standard reconstructs (provisional)

D, C = "mnist_density", "mnist_clustering"
SEEDS = (0, 1, 2)


def _gmm(k: int) -> list[str]:
    return ["prior=gmm", f"prior.K={k}"]


# The vae rows keep β = model.reg_weight = 1: the ELBO's own weight, so their NLL is bounded by the
# objective they train; only CSRAE's λ, which has no such value, is searched.
VAE = ["model=vae"]
CSRAE = ["model=csrae", CHOSEN_LAMBDA]
GECO = ["model.constraint=reconstruction", f"model.target_recon={KAPPA}"]

# (name, experiment, overrides) in the order the queue trains them.
PLAN = [
    # 1. The anchors (docs/MATH.md, "Published anchors": dynamic MNIST 84.50 and 82.38). vae_standard_s0
    # was started by hand with explicit overrides; mnist_density + these composes to the same checkpoint
    # fingerprint (tests/test_experiments.py), so it resumes; so does vae_vamp500_s0.
    ("vae_standard_s0", D, [*VAE, "prior=standard"]),
    ("vae_vamp500_s0", D, [*VAE, "prior=vamp", "prior.K=500"]),
    # 2. λ, chosen on validation by the λ search (LAMBDA_SEARCH): not a queue row.
    # 3. The same-prior pair, three seeds.
    *[(f"csrae_gmm10_s{s}", D, [*CSRAE, *_gmm(10), f"trainer.seed={s}"]) for s in SEEDS],
    *[(f"vae_gmm10_s{s}", D, [*VAE, *_gmm(10), f"trainer.seed={s}"]) for s in SEEDS],
    # 4. The clustering protocol, three seeds.
    *[(f"clu_csrae_gmm10_s{s}", C, [*CSRAE, f"trainer.seed={s}"]) for s in SEEDS],
    *[(f"clu_vae_gmm10_s{s}", C, [*VAE, f"trainer.seed={s}"]) for s in SEEDS],
    # 5. Later: the pair at matched reconstruction (GECO: the weight is the multiplier's, starting at 1),
    # more components, and CSRAE with the VampPrior.
    ("vae_gmm10_geco_s0", D, [*VAE, *_gmm(10), *GECO]),
    ("csrae_gmm10_geco_s0", D, ["model=csrae", *_gmm(10), *GECO]),
    ("vae_gmm50_s0", D, [*VAE, *_gmm(50)]),
    ("csrae_gmm50_s0", D, [*CSRAE, *_gmm(50)]),
    ("csrae_vamp500_s0", D, [*CSRAE, "prior=vamp", "prior.K=500"]),
]

# Why a planned run has no result yet, in mnist_converged_plan.csv (the queue runs them in PLAN order).
NOT_RUN = (
    "not run yet: queued behind the rows above it (a converged run takes about 2-6 core-hours here, "
    "two at a time); rerun the queue to train it"
)
WAITING = f"waiting for the λ search: {LAMBDA_SEARCH.name} (the λ with the lowest val_nll) is missing or unfinished"


def lambda_budget() -> int:
    """How many finished trials make the λ search complete: its sweep file's n_trials."""
    from omegaconf import OmegaConf

    return int(OmegaConf.load(LAMBDA_SWEEP).hydra.sweeper.n_trials)


def chosen_lambda() -> float | None:
    """model.reg_weight of the λ search's trial with the lowest val_nll (validation data only); None while
    LAMBDA_SEARCH is missing, holds fewer finished (COMPLETE or PRUNED) trials than the search's budget
    (it is rewritten as trials finish), or has no trial with a val_nll (pruned and failed trials have none)."""
    try:
        with open(LAMBDA_SEARCH, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return None
    if rows and not {"state", "reg_weight", "val_nll"} <= set(rows[0]):
        raise ValueError(f"{LAMBDA_SEARCH} needs the columns state, reg_weight and val_nll")
    if sum(r["state"] in ("COMPLETE", "PRUNED") for r in rows) < lambda_budget():
        return None
    done = [(float(r["val_nll"]), float(r["reg_weight"])) for r in rows if r["val_nll"] not in ("", None)]
    done = [d for d in done if math.isfinite(d[0])]
    return min(done)[1] if done else None


def resolve(overrides: list[str], lam: float | None) -> list[str] | None:
    """A row's overrides with CHOSEN_LAMBDA replaced by model.reg_weight=lam; None while the row waits
    for the λ search (lam None)."""
    if CHOSEN_LAMBDA not in overrides:
        return list(overrides)
    if lam is None:
        return None
    return [f"model.reg_weight={lam!r}" if o == CHOSEN_LAMBDA else o for o in overrides]


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


def _evaluation_progress(run_dir: Path) -> str | None:
    """The last line of the run's log when training is over and the final evaluation is under way (it
    logs its progress once a minute: most of an hour at S = 5000), else None."""
    try:
        with open(run_dir / "run.log", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    last = lines[-1] if lines else ""
    return last.split("] - ", 1)[1] if "][src.evaluate][" in last and "] - " in last else None


def state(name: str, runs: Path, waiting: bool = False, planned_epochs: int | None = None) -> tuple[str, str]:
    """(state, reason): done | capped (completed at a session's --epochs cap, below planned_epochs and
    without stopping early: the queue extends it) | training | evaluating (training over, the final
    evaluation under way) | resumable | failed | waiting (for the λ search, when `waiting` and nothing of
    the run exists) | todo."""
    d = runs / name
    r = read_json(d / "results.json")
    if r is not None and r.get("status") == "completed":
        ran = r.get("epochs_run") or 0
        if planned_epochs and not r.get("stopped_early") and ran < planned_epochs:
            return "capped", f"stopped at a session's epoch cap after {ran} of {planned_epochs} epochs"
        return "done", ""
    if (COPIES / name / "results.json").exists() and not d.exists():
        return "done", "collected copy (run dir not on this machine)"
    if active(d):
        evaluating = _evaluation_progress(d)
        if evaluating:
            return "evaluating", f"{_epochs_done(d)} epochs trained; {evaluating}"
        return "training", f"{_epochs_done(d)} epochs so far"
    if r is not None and r.get("status") == "failed":
        return "failed", str(r.get("error"))
    if (d / "checkpoints" / "last.pt").exists():
        return "resumable", f"stopped after {_epochs_done(d)} epochs ({(r or {}).get('status', 'no results.json')})"
    if waiting:
        return "waiting", WAITING
    return "todo", "not started"


def plan_states(runs: Path) -> list[tuple[str, str, list[str], list[str] | None, str, str]]:
    """(name, experiment, overrides, resolved overrides or None, state, reason) of every PLAN row."""
    lam = chosen_lambda()
    return [
        (name, experiment, overrides, resolve(overrides, lam), *_row_state(name, runs, lam))
        for name, experiment, overrides in PLAN
    ]


def _row_state(name: str, runs: Path, lam: float | None) -> tuple[str, str]:
    """state() of one run: a PLAN row against its planned epochs, any other run dir as it stands."""
    for planned_name, experiment, overrides in PLAN:
        if planned_name == name:
            planned = planned_epochs(experiment, tuple(o for o in overrides if o != CHOSEN_LAMBDA))
            return state(name, runs, resolve(overrides, lam) is None, planned)
    return state(name, runs)


@functools.cache
def _composed(experiment: str, overrides: tuple[str, ...]):
    """The config a planned run composes to (read only; composed once per process)."""
    sys.path.insert(0, str(ROOT))
    from src.config import compose_config

    return compose_config(f"experiment={experiment}", *overrides)


def planned_epochs(experiment: str, overrides: tuple[str, ...]) -> int:
    """trainer.epochs of a planned run as its experiment and overrides compose it (before any --epochs cap)."""
    return int(_composed(experiment, overrides).trainer.epochs)


def _log(msg: str) -> None:
    print(time.strftime("%Y-%m-%d %H:%M:%S ", time.gmtime()) + msg, flush=True)


def collect(name: str, runs: Path) -> None:
    """Copy a finished run's small files into COPIES/<name>/ (benchmarks/results/mnist_converged_runs/)."""
    src, dst = runs / name, COPIES / name
    for rel in COPIED:
        if (src / rel).exists():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)


def _planned_config(experiment: str, overrides: list[str]) -> dict:
    """model, prior, K, reg_weight, constraint and seed of a planned run, from its composed config."""
    from src.schema import enum_value as v

    cfg = _composed(experiment, tuple(overrides))
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
    for name, experiment, overrides, args, st, reason in plan_states(runs):
        r = read_json(COPIES / name / "results.json") if st == "done" else None
        if r is None and st == "done":
            r = read_json(runs / name / "results.json")
        if r is not None:
            base = r
        elif args is None:  # λ not chosen yet: no reg_weight to show
            base = {**_planned_config(experiment, [o for o in overrides if o != CHOSEN_LAMBDA]), "reg_weight": None}
        else:
            base = _planned_config(experiment, args)
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
                "overrides": " ".join(overrides if args is None else args),
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


def _evaluated(run_dir: Path, out: str) -> bool:
    """run_dir/out exists and evaluated the model the run ends with (a run extended since has another)."""
    if not (run_dir / out).exists():
        return False
    sys.path.insert(0, str(ROOT))
    from src.finished_runs import load_model

    return json.loads((run_dir / out).read_text()).get("checkpoint_epoch") == load_model(run_dir).epoch


def paired(a: str, b: str, runs: Path, samples: int, seed: int = 1234) -> dict:
    """Per-test-point paired NLL difference a − b on all 10 000 test points: both runs' models
    (src.finished_runs.load_model) are evaluated by benchmarks/mnist_eval.py with the same importance-sampling
    noise (one seed), in parallel; the mean difference gets a t-based 95% CI over test points (scipy's
    paired t-test). This is the uncertainty of the evaluation given the two trained models, not over
    training seeds. One row per pair in mnist_converged_paired.csv (replaced when rerun)."""
    from scipy import stats

    lam = chosen_lambda()
    for n in (a, b):
        st, reason = _row_state(n, runs, lam)
        if st != "done" or not list((runs / n / "checkpoints").glob("*.pt")):
            why = (
                f"{st}: {reason}"
                if st != "done"
                else f"no checkpoints under {runs / n}" + (f"; {reason}" if reason else "")
            )
            sys.exit(f"error: {n} is not a finished run ({why}); --paired compares the final models of two")
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
        if not _evaluated(runs / n, out)
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
    sys.path.insert(0, str(ROOT))
    from src.formatting import p_value

    print(
        f"{a} − {b}: {row['diff']:+.3f} nats (95% CI {row['ci95_lo']:+.3f} … {row['ci95_hi']:+.3f}, "
        f"{p_value(row['p_value'])}; S={samples}, {len(d)} test points) -> {PAIRED}"
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
            (st == "todo", n, e, args)  # runs already started finish first, then the plan's order
            for n, e, _, args, st, _ in plan_states(runs)
            if n not in running
            and n not in failed
            and (not only or n in only)
            and (
                st in ("todo", "resumable") or (st == "capped" and (epochs is None or epochs > _epochs_done(runs / n)))
            )
            and args is not None
        ]
        todo = [t[1:] for t in sorted(todo, key=lambda t: t[0])]  # stable: plan order within each
        while todo and len(running) < parallel:
            name, experiment, args = todo.pop(0)
            _log(f"start {name}: experiment={experiment} {' '.join(args)}")
            log = open(runs / f"{name}.log", "a")
            running[name] = subprocess.Popen(
                command(name, experiment, args, runs, epochs), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        if not running:
            break
        time.sleep(POLL_S)
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
    try:
        chosen_lambda()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if args.list:
        for name, experiment, overrides, resolved, st, reason in plan_states(runs):
            print(
                f"{st:10s} {name:22s} experiment={experiment} {' '.join(resolved or overrides)}"
                + (f"  [{reason}]" if reason else "")
            )
    elif args.run:
        run_queue(runs, max(1, args.parallel), args.only, args.epochs)
    elif args.paired:
        paired(*args.paired, runs, args.samples)
    else:
        for name, *_, st, _ in plan_states(runs):
            if st == "done" and (runs / name).exists():
                collect(name, runs)
        build_tables(runs)
        report()
        print(f"wrote {TABLE} and {PLAN_TABLE}")


if __name__ == "__main__":
    main()
