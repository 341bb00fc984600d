"""Where a report goes: its directory's name, and the manifest that keeps a rerun from deleting any
file the report did not write."""

from __future__ import annotations

import json
import re
from pathlib import Path

from src import analysis as A
from src.errors import UserError
from src.files import replace_atomically

OUTPUTS = Path("outputs")
MANIFEST = ".csrae_report"  # in every report dir: the files this command wrote there (the only ones it deletes)
#: What a run or sweep directory holds: the report never writes into (or inside) such a directory.
RUN_OR_SWEEP_MARKERS = (
    "results.json",
    ".hydra",
    "multirun.yaml",
    "optimization_results.yaml",
    "trials.csv",
    ".optuna",
    ".submitit",
    "checkpoints",
    "metrics.csv",
    "run.log",
)


class ReportDirError(UserError):
    """The report directory cannot be used without touching files the report did not write."""


def report_name(target: Path, outputs: Path = OUTPUTS) -> str:
    """outputs/multirun/2026-01-02/10-11-12 → multirun_2026-01-02_10-11-12; outputs → all."""
    t = target.resolve()
    o = Path(outputs).resolve()
    if t == o:
        return "all"
    try:
        parts = t.relative_to(o).parts
    except ValueError:
        parts = t.parts[-2:]
    name = "_".join(parts) or "report"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


class ReportDir:
    """The report directory and its manifest (MANIFEST, JSON): every file the report writes is
    recorded there before it is written, and a rerun deletes only the files of that list.

    Refused (ReportDirError): a directory that holds a run or a sweep, one inside a run, and an existing
    non-empty directory without a manifest (its files are someone else's).
    """

    def __init__(self, path: Path, source: Path):
        self.path = Path(path)
        self.source = str(Path(source).resolve())
        self.files: list[str] = []
        self._check()

    def _check(self) -> None:
        p = self.path
        held = [m for m in RUN_OR_SWEEP_MARKERS if (p / m).exists()] if p.is_dir() else []
        if p.is_dir() and not held:
            held = [c.name + "/" for c in p.iterdir() if c.is_dir() and A.is_run_dir(c)][:1]
        if held:
            raise ReportDirError(
                f"{p} holds a run or a sweep ({held[0]}); the report will not write there: "
                "choose another --out/--name (default outputs/reports/<name>)"
            )
        run = next((a for a in p.resolve().parents if A.is_run_dir(a)), None)
        if run is not None:
            raise ReportDirError(f"{p} is inside the run directory {run}; choose another --out/--name")
        if p.exists() and not p.is_dir():
            raise ReportDirError(f"{p} exists and is not a directory; choose another --out/--name")
        if p.is_dir() and not (p / MANIFEST).is_file() and any(p.iterdir()):
            raise ReportDirError(
                f"{p} is not empty and was not written by python -m src.report (no {MANIFEST}); "
                "choose another --out/--name"
            )

    def _old_files(self) -> list[str]:
        try:
            old = json.loads((self.path / MANIFEST).read_text()).get("files", [])
        except (OSError, ValueError, AttributeError):  # a marker of an older version: no list, delete nothing
            return []
        return [f for f in old if isinstance(f, str) and f == Path(f).name and f != MANIFEST]

    def clear(self) -> None:
        """Create the directory; delete the files the previous report listed in its manifest."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ReportDirError(f"cannot create {self.path}: {e.strerror or e}; choose another --out/--name") from None
        for f in self._old_files():
            target = self.path / f
            if target.is_file() and not target.is_symlink():
                target.unlink()
        self._save()

    def file(self, name: str) -> Path:
        """The path to write name to, recorded in the manifest first."""
        if name not in self.files:
            self.files.append(name)
            self._save()
        return self.path / name

    def _save(self) -> None:
        with replace_atomically(self.path / MANIFEST) as tmp:
            tmp.write_text(
                json.dumps({"written_by": "python -m src.report", "source": self.source, "files": self.files}, indent=1)
            )
