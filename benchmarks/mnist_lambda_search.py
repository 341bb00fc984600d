"""The MNIST study's λ, chosen on validation data: sweep=csrae_lambda (TPE over model.reg_weight alone,
hyperband pruning) for csrae + gmm K=10 under experiment=mnist_density, at a reduced budget: 60 epochs
with a 20-epoch warm-up (the protocol: up to 2000, warm-up 100) and val_nll with S = 500 on all 10 000
validation points (no clustering or few-label scores: only val_nll is compared); 12 trials shared by
the worker processes (hydra.sweeper.budget=study).

    python benchmarks/mnist_lambda_search.py             # run or resume the search (2 workers), then --csv
    python benchmarks/mnist_lambda_search.py --workers 1
    python benchmarks/mnist_lambda_search.py --csv       # write benchmarks/results/mnist_lambda_search.csv
                                                         # and its figure, mnist_lambda_search.png

The study is a journal file in the runs dir (CSRAE_RUNS_DIR, default ~/csrae-runs/mnist_converged), so a
killed search resumes: its RUNNING trials are closed first (COMPLETE from a finished job's results.json,
else FAIL, which does not count against the budget) and the workers fill the budget up. The CSV is
rewritten whenever a trial finishes (commit it: it is the search's memory); a search whose runs dir was
lost starts its new study from the CSV's finished trials (values and interim curves), so only unfinished
trials are run again. The CSV has one row per trial; benchmarks/mnist_converged.py trains its csrae rows at
the reg_weight of the row with the lowest val_nll. β stays 1 for the VAE rows (the ELBO's own weight):
nothing to search there.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # mnist_converged.py beside it

from mnist_converged import COMMON, DEFAULT_RUNS, LAMBDA_SEARCH, LAMBDA_SWEEP, ROOT  # noqa: E402

NAME = "csrae_lambda"
SEARCH = [
    f"sweep={NAME}",
    "experiment=mnist_density",
    "prior.K=10",
    "trainer.epochs=60",
    "trainer.warmup_epochs=20",
    "eval.is_samples=500",
    "eval.images=false",
    "eval.clustering=false",
    "eval.fewlabel=false",
    "hydra.sweeper.budget=study",
    *COMMON,
]
COLUMNS = [
    "trial",
    "state",
    "reg_weight",
    "val_nll",
    "val_nll_sem",
    "epochs_run",
    "last_interim",
    "test_nll",
    "run_dir",
    "interims",  # {epoch: interim val NLL} as JSON: what the pruner compared
]


def storage(runs: Path) -> str:
    return str(runs / "lambda_search" / "study.log")


def run_search(runs: Path, workers: int, extra: list[str]) -> None:
    import optuna

    from src.sweeps.storage import ensure_study
    from src.sweeps.trials import close_stale

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = ensure_study(storage(runs), NAME, ["minimize"], ["val_nll"])
    restored = restore(study)
    if restored:
        print(f"new study: took back {restored} finished trials from {LAMBDA_SEARCH}", flush=True)
    closed = close_stale(study, 0, ["val_nll"])
    if closed["complete"] or closed["fail"]:
        print(f"closed trials a killed search left running: {closed}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    procs = []
    for w in range(workers):
        log = open(runs / "lambda_search" / f"w{w}-{stamp}.log", "w")
        cmd = [
            sys.executable,
            "-m",
            "src.run",
            "-m",
            *SEARCH,
            *extra,
            f"hydra.sweeper.storage={storage(runs)}",
            f"hydra.sweep.dir={runs / 'lambda_search' / f'w{w}-{stamp}'}",
        ]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    finished = None
    while any(p.poll() is None for p in procs):
        time.sleep(30)
        now = _finished_trials(runs)
        if now != finished:
            finished = now
            write_csv(runs)
    codes = [p.returncode for p in procs]
    if any(codes):
        sys.exit(f"error: a search worker failed (exit codes {codes}); logs in {runs / 'lambda_search'}")


def restore(study) -> int:
    """Give a study with no trials the finished (COMPLETE or PRUNED) trials of the committed CSV, with their
    values and interim curves, so that the sampler and the pruner go on from them; returns how many."""
    import optuna
    from omegaconf import OmegaConf

    from src.sweeps.space import search_space

    if study.trials or not LAMBDA_SEARCH.is_file():
        return 0
    space = search_space(OmegaConf.load(LAMBDA_SWEEP).hydra.sweeper.params)[0]
    with open(LAMBDA_SEARCH, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["state"] in ("COMPLETE", "PRUNED")]
    for row in rows:
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState[row["state"]],
                params={"model.reg_weight": float(row["reg_weight"])},
                distributions=space,
                value=float(row["val_nll"]) if row["state"] == "COMPLETE" else None,
                intermediate_values={int(k): float(v) for k, v in json.loads(row["interims"] or "{}").items()},
                user_attrs={"restored": {k: row[k] for k in ("val_nll_sem", "epochs_run", "test_nll", "run_dir")}},
            )
        )
    return len(rows)


def _finished_trials(runs: Path) -> int:
    from src.sweeps.storage import load_existing_study

    return sum(t.state.is_finished() for t in load_existing_study(storage(runs), NAME).trials)


def write_csv(runs: Path) -> Path:
    from src.sweeps.storage import load_existing_study

    study = load_existing_study(storage(runs), NAME)
    rows = []
    for t in study.trials:
        job = Path(str(t.user_attrs.get("sweep_dir"))) / str(t.user_attrs.get("job_num"))
        try:
            r = json.loads((job / "results.json").read_text())
        except (OSError, ValueError):
            r = t.user_attrs.get("restored", {})  # a trial taken back from the CSV: its run dir is gone
        done = t.state.name == "COMPLETE"
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                "reg_weight": t.params.get("model.reg_weight"),
                "val_nll": t.value if done else None,  # pruned trials' values are interim: never compared
                "val_nll_sem": r.get("val_nll_sem") if done else None,
                "epochs_run": r.get("epochs_run"),
                "last_interim": t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None,
                "test_nll": r.get("test_nll") if done else None,  # shown, never used to choose
                "run_dir": r.get("run_dir", str(job)),
                "interims": json.dumps({str(k): v for k, v in sorted(t.intermediate_values.items())}),
            }
        )
    LAMBDA_SEARCH.parent.mkdir(parents=True, exist_ok=True)
    tmp = LAMBDA_SEARCH.with_suffix(".csv.tmp")  # a reader never sees half a file
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, LAMBDA_SEARCH)
    return LAMBDA_SEARCH


def draw(table: Path = LAMBDA_SEARCH) -> Path:
    """The search at a glance, from its CSV, beside it as .png: left, each finished trial's val NLL against
    λ (95% interval; pruned trials as ticks at their λ); right, the interim val NLL curves the pruner
    compared, one per trial, coloured by λ."""
    import matplotlib.colors as mcolors

    from src.plotting import pyplot

    with open(table, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["state"] in ("COMPLETE", "PRUNED")]
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    done = sorted(
        (float(r["reg_weight"]), float(r["val_nll"]), float(r["val_nll_sem"] or 0))
        for r in rows
        if r["state"] == "COMPLETE"
    )
    if done:
        lam, nll, sem = zip(*done)
        left.errorbar(lam, nll, yerr=[1.96 * s for s in sem], fmt="o-", capsize=3, label="finished")
        best = min(done, key=lambda d: d[1])
        left.annotate(
            f"best: λ = {best[0]:.3g}", (best[0], best[1]), textcoords="offset points", xytext=(0, 10), ha="center"
        )
    for r in rows:
        if r["state"] == "PRUNED":
            left.axvline(float(r["reg_weight"]), color="grey", ls=":", lw=1)
    left.plot([], [], color="grey", ls=":", label="pruned")
    left.set(xscale="log", xlabel="λ (model.reg_weight)", ylabel="val NLL (nats)", title="finished trials")
    left.legend()
    lams = [float(r["reg_weight"]) for r in rows]
    norm = mcolors.LogNorm(min(lams), max(lams)) if lams else None
    for r in rows:
        curve = {int(k): v for k, v in json.loads(r["interims"] or "{}").items()}
        if curve:
            epochs = sorted(curve)
            right.plot(
                epochs,
                [curve[e] for e in epochs],
                color=plt.cm.viridis(norm(float(r["reg_weight"]))),
                ls="-" if r["state"] == "COMPLETE" else "--",
            )
    if norm is not None:
        fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=right, label="λ")
    right.set(xlabel="epoch", ylabel="interim val NLL (nats)", title="what the pruner compared")
    fig.suptitle(f"λ search, csrae + gmm K=10 on MNIST: {len(done)} finished, {len(rows) - len(done)} pruned")
    fig.tight_layout()
    out = table.with_suffix(".png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", action="store_true", help="only write the CSV from the study")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS)
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides, e.g. for a smoke run in another --runs-dir")
    args = ap.parse_args(argv)
    runs = args.runs_dir.expanduser().resolve()
    (runs / "lambda_search").mkdir(parents=True, exist_ok=True)
    if not args.csv:
        run_search(runs, max(1, args.workers), args.extra)
    table = write_csv(runs)
    print(f"wrote {table} and {draw(table)}")


if __name__ == "__main__":
    main()
