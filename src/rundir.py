"""A run directory holds one run: one process at a time, and never two configurations' outputs.

- `lock(run_dir)`: an exclusive `fcntl.flock` on `<run dir>/.lock`, held until the process ends
  (the kernel drops it when the process dies, even by SIGKILL, so no stale lock is ever left).
- `check(run_dir, ...)`: what the directory already holds must be what this run continues:
  checkpoints of the same configuration (fingerprint) when resuming, nothing of value otherwise.
  It only reads, so a refused run changes nothing.
"""

from __future__ import annotations

import csv
import fcntl
import json
import os
from pathlib import Path

from src.checkpoints import load_checkpoint
from src.errors import UserError
from src.files import NO_SPACE_ERRNOS
from src.settings import TrainSettings

LOCK_FILE = ".lock"

_held: dict[str, int] = {}  # realpath of a run dir -> the open, locked file descriptor


class RunDirError(UserError, ValueError):
    """The run directory is in use or holds another run; the message is one line."""


def lock(run_dir: Path) -> bool:
    """Take the run dir's lock for this process; True if taken by this call, False if already held.
    Raises RunDirError if another process holds it, or if the directory cannot be written."""
    key = os.path.realpath(run_dir)
    if key in _held:
        return False
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirError(f"cannot use run dir {run_dir}: {e.strerror or e}") from None
    _flock(fd, run_dir, fcntl.LOCK_EX)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as e:  # a full disk: the lock is held, only the pid it shows to others is missing
        if e.errno not in NO_SPACE_ERRNOS:
            raise
    _held[key] = fd
    return True


def lock_to_read(run_dir: Path) -> bool:
    """For a run dir this process can only read (an archive, a colleague's share): a shared lock on its
    .lock, so that no run trains there while it is read. True if taken by this call; False when already
    held or when there is no .lock (no run has been there to hold one). RunDirError while a run holds it."""
    key = os.path.realpath(run_dir)
    if key in _held or not (Path(run_dir) / LOCK_FILE).exists():
        return False
    fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY)
    _flock(fd, run_dir, fcntl.LOCK_SH)
    _held[key] = fd
    return True


def _flock(fd: int, run_dir: Path, mode: int) -> None:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise RunDirError(
            f"run dir {run_dir} is in use by another process{pid}; wait for it to end or use another hydra.run.dir"
        ) from None


def unlock(run_dir: Path) -> None:
    fd = _held.pop(os.path.realpath(run_dir), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


def check(run_dir: Path, settings: TrainSettings) -> None:
    """Refuse (RunDirError / CheckpointError) unless this run may write into run_dir.

    Resuming (trainer.resume=true and checkpoints/last.pt exists): last.pt and best.pt must carry
    this configuration's fingerprint, and trainer.epochs may not be below the epochs already run.
    Starting from scratch: the directory may hold no checkpoint, no metrics row and no completed
    results.json (a failed attempt's record is replaced).
    """
    run_dir = Path(run_dir)
    last, best = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    if settings.resume and last.exists():
        done = load_checkpoint(last, settings.fingerprint)["state"]["epoch"]
        if best.exists():
            load_checkpoint(best, settings.fingerprint)
        if settings.epochs < done:
            raise RunDirError(
                f"{last} has already trained {done} epochs: trainer.epochs={settings.epochs} cannot "
                f"shorten the run; set trainer.epochs>={done} or use a new hydra.run.dir"
            )
        return
    held = holdings(run_dir)
    if held:
        why = (
            "trainer.resume=false will not overwrite it"
            if not settings.resume
            else "there is no checkpoints/last.pt to resume from"
        )
        raise RunDirError(
            f"run dir {run_dir} already holds a run ({', '.join(held)}) and {why}; use a new "
            "hydra.run.dir, or move those files away to start over in this one"
        )


SWEEP_MARKERS = ("multirun.yaml", "optimization_results.yaml", "trials.csv", ".optuna", ".submitit")


def holdings(run_dir: Path) -> list[str]:
    """What in run_dir a new run would overwrite or hide and someone may want: checkpoints, metrics
    rows, a completed record, a sweep (its files or job dirs: a run's results.json on top of a sweep
    makes the report see one run instead of the sweep)."""
    held = [f"checkpoints/{p.name}" for p in sorted((run_dir / "checkpoints").glob("*.pt"))]
    for name in ("pretrain_metrics.csv", "metrics.csv"):
        if (run_dir / name).is_file():
            try:
                with open(run_dir / name, newline="") as f:
                    rows = sum(1 for _ in csv.DictReader(f))
            except (UnicodeDecodeError, csv.Error, OSError) as e:
                held.append(f"{name} (unreadable: {type(e).__name__})")
                continue
            if rows:
                held.append(f"{name} with {rows} epoch(s)")
    held += [f"{name} (a sweep)" for name in SWEEP_MARKERS if (run_dir / name).exists()]
    if run_dir.is_dir():
        held += [
            f"{c.name}/results.json (a sweep's job)"
            for c in sorted(run_dir.iterdir())
            if c.is_dir() and (c / "results.json").is_file()
        ][:1]
    results = run_dir / "results.json"
    if results.is_file():
        try:
            status = json.loads(results.read_text()).get("status")
        except (ValueError, AttributeError):
            status = "unreadable"
        if status not in ("failed", "interrupted", "running"):
            held.append(f"results.json ({status})")
    return held
