"""Finished runs, back from their run directories.

- `load_model(run_dir, device="cpu") -> LoadedRun`: the model of a run (finished or interrupted), built
  from its .hydra/config.yaml with the weights its final evaluation uses: checkpoints/best.pt, or
  last.pt where the run evaluates its final weights (src.checkpoints.best_checkpoint), checked against
  the configuration's fingerprint as the run checks them. Only reads.
- `python -m src.evaluate RUN_DIR [overrides]` (`main`): the run's own evaluation again
  (src.evaluate.evaluate_model) with other eval.* settings, written to RUN_DIR/eval_<tag>.json;
  results.json is left as the run wrote it. Holds the run dir's lock, so a run that is still
  training is never evaluated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from src import evaluate, rundir
from src.checkpoints import CheckpointError, best_checkpoint, load_checkpoint
from src.config import ConfigError, validate
from src.contract import key_config, strict
from src.data import IMAGE_SHAPES, load_dataset
from src.errors import UserError, first_line, print_error
from src.files import replace_atomically, write_error
from src.formatting import headline
from src.models import Autoencoder, build_model, count_parameters
from src.schema import Config, enum_value
from src.settings import config_fingerprint, resolve_device

log = logging.getLogger(__name__)

# What a re-evaluation may change besides eval.*: where the data is, which points are evaluated, where it
# runs. Everything else (model.*, prior.*, trainer.seed, ...) would describe another model than the weights.
EVAL_KEYS = ("dataset.root", "dataset.max_eval", "trainer.device", "trainer.threads")


@dataclass
class LoadedRun:
    model: Autoencoder  # in eval mode, on the device asked for
    cfg: DictConfig  # the run's composed config (.hydra/config.yaml), typed by the schemas
    checkpoint: Path  # the file the weights came from
    epoch: int  # the training epoch of those weights


def run_config(run_dir: Path) -> DictConfig:
    """The config the run was composed with (.hydra/config.yaml, which Hydra writes), typed by the schemas."""
    run_dir = Path(run_dir)
    path = run_dir / ".hydra" / "config.yaml"
    if not run_dir.is_dir():
        raise rundir.RunDirError(f"{run_dir} is not a run directory (no such directory)")
    if not path.is_file():
        raise rundir.RunDirError(f"{run_dir} is not a run directory: it has no .hydra/config.yaml")
    try:
        return _typed(OmegaConf.load(path))
    except Exception as e:  # noqa: BLE001 - a file that is not this harness's config, whatever the parser says
        raise rundir.RunDirError(f"{path} is not a configuration of this harness ({first_line(e)})") from None


def _typed(raw: DictConfig) -> DictConfig:
    """raw merged onto the schemas. A key no schema declares (a run started with `+trainer.epoch=50`) is
    kept, as Hydra's compose kept it: the checkpoint's fingerprint may include it."""
    extra = {}
    while True:
        try:
            cfg = OmegaConf.merge(OmegaConf.structured(Config), raw)
            break
        except ConfigKeyError as e:
            parent, _, key = e.full_key.rpartition(".")
            extra[e.full_key] = (OmegaConf.select(raw, parent) if parent else raw).pop(key)
    with open_dict(cfg):
        for key, value in extra.items():
            OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def load_model(run_dir: Path, device: str | torch.device = "cpu") -> LoadedRun:
    """The run's model with the weights its final evaluation uses, in eval mode on device.

    Raises RunDirError (not a run dir, no .hydra/config.yaml) or CheckpointError (no checkpoint, an
    unreadable one, one written for another configuration), each with a one-line message.
    """
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    fingerprint = config_fingerprint(cfg)
    fix = f"the model of {run_dir / '.hydra' / 'config.yaml'} cannot be loaded from it"
    last_path = run_dir / "checkpoints" / "last.pt"
    last = load_checkpoint(last_path, fingerprint, fix) if last_path.exists() else None
    # As at the end of the run: best.pt if it holds the best epoch that last.pt records, else the final weights.
    ckpt = best_checkpoint(run_dir, fingerprint, last["state"]["best_epoch"] if last else None, fix) or last
    if ckpt is None:
        raise CheckpointError(
            f"{run_dir} has no checkpoints/best.pt or last.pt to load (trained with "
            "trainer.checkpoint=false, or stopped before its first epoch ended)"
        )
    path = last_path if ckpt is last else run_dir / "checkpoints" / "best.pt"
    model = build_model(cfg.model, cfg.prior, IMAGE_SHAPES[enum_value(cfg.dataset.name)])
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {path} does not match the model of its run dir's config ({first_line(e)[:200]})"
        ) from None
    return LoadedRun(model.to(resolve_device(str(device))).eval(), cfg, path, ckpt["state"]["epoch"])


# --- python -m src.evaluate RUN_DIR [overrides] -------------------------------------------------


def with_overrides(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """cfg with eval.* and EVAL_KEYS overrides (`key=value`), checked by the schemas and src.config.validate."""
    for override in overrides:
        key = override.split("=", 1)[0]
        if "=" not in override or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
            raise ConfigError(f"{override!r} is not an override: give key=value, e.g. eval.is_samples=5000")
        if not (key.startswith("eval.") or key in EVAL_KEYS):
            raise ConfigError(
                f"{override}: a re-evaluation takes only eval.*, {', '.join(EVAL_KEYS)}; "
                f"{key} would describe another model than the run's weights (train a new run)"
            )
    try:
        out = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as e:
        where = f" ({e.full_key})" if getattr(e, "full_key", None) else ""
        raise ConfigError(f"{first_line(e)}{where}") from None
    validate(out)
    return out


def eval_tag(overrides: list[str]) -> str:
    """eval_<tag>.json: the eval.* and dataset.max_eval overrides, sorted, `eval.` left out, joined by `_`
    ('default' without any). Where it runs (dataset.root, trainer.*) does not change the numbers' meaning."""
    parts = sorted(o.removeprefix("eval.") for o in overrides if o.startswith(("eval.", "dataset.max_eval=")))
    tag = re.sub(r"[^\w.=-]+", "-", "_".join(parts)) or "default"
    if len(tag) > 100:  # a file name must stay short: keep the start, make it unique with a hash
        tag = f"{tag[:80]}-{hashlib.sha1(tag.encode()).hexdigest()[:10]}"
    return tag


def reevaluate(run_dir: Path, overrides: list[str], out_dir: Path | None = None) -> tuple[Path, dict]:
    """Evaluate a finished run again, with its own config plus `overrides`; returns the file written and its record.

    The record (and pictures) go to out_dir, by default the run dir. A run dir this process cannot
    write (an archive, a colleague's share) is read under a shared lock, and needs another out_dir.
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    cfg = with_overrides(run_config(run_dir), overrides)
    _check_writable(out_dir)
    try:
        took_lock = rundir.lock(run_dir) if os.access(run_dir, os.W_OK) else rundir.lock_to_read(run_dir)
    except rundir.RunDirError as e:
        raise rundir.RunDirError(
            f"{str(e).split(';')[0]}: a run still training it, or another evaluation; evaluate it once that has ended"
        ) from None
    try:
        device = resolve_device(cfg.trainer.device)
        if cfg.trainer.threads:
            torch.set_num_threads(cfg.trainer.threads)
        run = load_model(run_dir, device)
        data = load_dataset(cfg.dataset)
        log.info(
            "loaded %s (epoch %d, %d parameters) on %s", run.checkpoint, run.epoch, count_parameters(run.model), device
        )
        tag = eval_tag(overrides)
        image_dir = out_dir / f"eval_{tag}"  # pictures, with eval.images=true: the run's own stay as they are
        metrics = evaluate.evaluate_model(run.model, data, cfg.eval, cfg.trainer.seed, image_dir, device)
        if "images" in metrics:
            metrics["images"] = [f"{image_dir.name}/{name}" for name in metrics["images"]]
        record = {
            "run_dir": str(run_dir),
            "overrides": list(overrides),
            "checkpoint": str(run.checkpoint.relative_to(run_dir)),
            "checkpoint_epoch": run.epoch,
            **key_config(cfg),
            **metrics,
            "device": str(device),
        }
        path = out_dir / f"eval_{tag}.json"
        with replace_atomically(path) as tmp:  # a reader never sees half a file
            tmp.write_text(json.dumps(strict(record), indent=2, allow_nan=False) + "\n")
        return path, record
    finally:
        if took_lock:
            rundir.unlock(run_dir)


def _check_writable(out_dir: Path) -> None:
    """Refuse, before any work, to evaluate into a directory that cannot be written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        why = None if os.access(out_dir, os.W_OK | os.X_OK) else "read-only, or no write permission"
    except OSError as e:
        why = e.strerror or str(e)
    if why:
        raise rundir.RunDirError(
            f"cannot write in {out_dir} ({why}); evaluate into a directory you can write with --out DIR"
        )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every user error of the harness
        self.exit(print_error(f"{message} (python -m src.evaluate --help)"))


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m src.evaluate",
        description="Evaluate a finished (or interrupted) run again, as it evaluates itself at its end, from its "
        ".hydra/config.yaml and checkpoints/best.pt, with the overrides given. Writes "
        "RUN_DIR/eval_<tag>.json, or OUT/eval_<tag>.json with --out (tag: the eval.* and dataset.max_eval "
        "overrides, sorted, 'default' without any); results.json is not touched.",
        epilog=f"overrides: eval.* and {', '.join(EVAL_KEYS)}; others are refused. Example: python -m src.evaluate "
        "outputs/runs/DATE/TIME eval.is_samples=5000 eval.clustering=false. Exit codes: 0 written, 2 a user "
        "error (one line on stderr: not a run dir, a refused override, a run dir in use, no checkpoint, "
        "a checkpoint of another configuration, a directory that cannot be written, a full disk), 130 interrupted.",
    )
    parser.add_argument("run_dir", type=Path, nargs="?", metavar="RUN_DIR", help="the run directory to evaluate")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. eval.is_samples=5000")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="write there instead of RUN_DIR (a run dir you cannot write)"
    )
    args = parser.parse_intermixed_args(argv)
    if args.run_dir is None:
        parser.error("give the run directory to evaluate")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    try:
        path, record = reevaluate(args.run_dir, args.overrides, args.out)
    except Exception as e:
        error = e if isinstance(e, UserError) else write_error(e)  # a full disk too: one line
        if error is None:
            raise
        return print_error(error)
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    print(f"{path}: {headline(record)}")
    return 0
