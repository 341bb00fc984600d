"""The Optuna study of a sweep: its storage URL (masked in every message), creating and loading the
study with one-line errors, its summary, and trials.csv.

Optuna and SQLAlchemy are imported inside the functions that use them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from src.errors import first_line
from src.sweeps.jobs import objective_names

log = logging.getLogger(__name__)


# --- secrets in storage URLs --------------------------------------------------------------------

_SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token|auth", re.IGNORECASE)
_USERINFO = re.compile(r"^(\w[\w+.-]*:?/*)?([^?#]*)@")  # scheme://, then everything up to the last @ before ?


def _secrets(url: str) -> list[str]:
    """The password of a storage URL and the values of secret-looking query keys."""
    from urllib.parse import parse_qsl, urlsplit

    found = []
    m = _USERINFO.match(url)
    if m and ":" in m.group(2):  # user:password@ (the user may contain @: split at the first : after it)
        found.append(m.group(2).split(":", 1)[1])
    found += [v for k, v in parse_qsl(urlsplit(url).query) if _SECRET_QUERY_KEY.search(k)]
    return [s for s in found if s]


def masked(url: Any) -> str:
    """A storage URL fit for logs and messages: the password (also one in the query string, e.g.
    `?password=...`) replaced by ***. User names may contain `@`."""
    from sqlalchemy.engine import make_url

    text = str(url)
    misparsed = False
    try:
        u = make_url(text)
        misparsed = "@" in (u.host or "")  # an unencoded @ in the password: the host holds the rest of it
        query = {k: ("***" if _SECRET_QUERY_KEY.search(k) else v) for k, v in u.query.items()}
        out = u.set(query=query).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy can parse
        out = text
    if misparsed or any(secret in out for secret in _secrets(text)):
        out = _USERINFO.sub(lambda m: (m.group(1) or "") + "***@", out)
        for secret in _secrets(text):
            out = out.replace(secret, "***")
    return out


def scrub(message: Any, url: Any) -> str:
    """message with the storage URL masked and its secrets removed wherever they appear."""
    text = str(message).replace(str(url), masked(url))
    for secret in _secrets(str(url)):
        text = text.replace(secret, "***")
    return text


# --- the study a config names -------------------------------------------------------------------


def directions_of(direction: Any) -> list[str]:
    if isinstance(direction, (list, tuple, ListConfig)):
        return [getattr(d, "name", str(d)) for d in direction]
    return [getattr(direction, "name", str(direction))]


def sweeper_settings(config: DictConfig) -> tuple[str, str, list[str], list[str]] | None:
    """(storage, study name, directions, objectives) of an Optuna sweep's config; None for other sweeps."""
    s = OmegaConf.select(config, "hydra.sweeper")
    if s is None or s.get("storage") is None or s.get("study_name") is None:
        return None
    return str(s.storage), str(s.study_name), directions_of(s.direction), objective_names(config)


def is_journal(storage: Any) -> bool:
    """A storage value that is a file path, not a URL, names an Optuna journal file (the convention
    optuna-dashboard follows): studies on a shared filesystem without a database server."""
    return "://" not in str(storage)


def _sqlite_path(storage: Any) -> Path | None:
    """The database file of a sqlite:/// URL (None for other URLs and in-memory databases)."""
    if not (isinstance(storage, str) and storage.startswith("sqlite:///")):
        return None
    path = storage[len("sqlite:///") :].split("?")[0]
    if path.startswith("file:"):  # sqlite:///file:PATH?mode=ro&uri=true
        path = path[len("file:") :]
    return Path(path) if path and path != ":memory:" else None


def storage_file(storage: Any) -> Path | None:
    """The file a storage lives in: the journal file, or the SQLite database (None for a server)."""
    return Path(str(storage)) if is_journal(storage) else _sqlite_path(storage)


def prepare_storage(storage: Any) -> None:
    """A journal file or SQLite database cannot be created in a missing directory: make the directory."""
    path = storage_file(storage)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


def open_storage(storage: Any):
    """What Optuna takes as the study storage: a JournalStorage for a file path, else the URL itself.
    A database made by an older Optuna is upgraded first (upgrade_schema)."""
    if is_journal(storage):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(str(storage)))
    upgrade_schema(storage)
    return str(storage)


def upgrade_schema(storage: str) -> None:
    """Bring a study database made by an older Optuna (e.g. 2.10) to this Optuna's schema, with
    Optuna's own migration (what `optuna storage upgrade` runs). A SQLite file is copied beside itself
    first and the upgrade is announced in one line; a server database is refused in one line that
    names the command, since only its owner can back it up and every worker must move at once."""
    import shutil
    import warnings

    from optuna.storages import RDBStorage

    path = _sqlite_path(storage)
    if path is not None and not path.is_file():
        return  # a new database gets the current schema
    try:
        rdb = RDBStorage(storage, skip_compatibility_check=True, skip_table_creation=True)
        current, head = rdb.get_current_version(), rdb.get_head_version()
    except storage_errors():
        return  # not a study database yet, or unreachable: the caller's own open reports it
    if current in (None, head):
        return
    if path is None:
        raise StudyStorageError(
            f"study storage {masked(storage)} was made by an older Optuna (schema {current}, this Optuna needs "
            f"{head}); back it up, stop every worker, then run: optuna storage upgrade --storage URL"
        )
    backup = path.with_name(f"{path.name}.schema-{current}.bak")
    print(
        f"upgrading study storage {path} from Optuna schema {current} to {head} (one way: older Optuna "
        f"versions cannot open it afterwards; every worker on it needs this Optuna); copy kept in {backup}",
        file=sys.stderr,
        flush=True,
    )
    shutil.copy2(path, backup)
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(logging.WARNING)  # one line above, not one per migration step
    try:
        with warnings.catch_warnings():  # the migration itself reads the old distribution classes
            warnings.simplefilter("ignore", FutureWarning)
            rdb.upgrade()
    except storage_errors() as e:
        raise storage_error(storage, e) from None
    finally:
        alembic_log.setLevel(level)


# --- errors -------------------------------------------------------------------------------------


class StudyStorageError(RuntimeError):
    """The study storage cannot be opened, read or written (one line for the user, secrets masked)."""


def storage_errors() -> tuple:
    """What opening or writing a study storage raises for a bad file, URL, driver or server."""
    from optuna.exceptions import OptunaError
    from sqlalchemy.exc import SQLAlchemyError

    return SQLAlchemyError, OptunaError, ImportError, OSError


_PERMANENT = ("not a database", "malformed", "readonly", "read-only", "unable to open")


def _chain(e: BaseException) -> list[BaseException]:
    """e and the errors it was raised from (optuna wraps SQLAlchemy's, which wraps the driver's)."""
    chain, x = [], e
    while x is not None and len(chain) < 6:
        chain.append(x)
        x = x.__cause__ or x.__context__
    return chain


def _permanent(e: BaseException) -> bool:
    """A storage error that waiting cannot cure (a corrupt or read-only file), wherever in the chain it is said."""
    text = " ".join(str(c) for c in _chain(e)).lower()
    return any(p in text for p in _PERMANENT)


def storage_error(storage: Any, e: BaseException) -> StudyStorageError:
    """One line saying what is wrong with the storage (optuna's own text for a failed write blames
    "exceeding max length", which is never the reason here)."""
    chain = _chain(e)
    text = " ".join(str(c) for c in chain).lower()
    where = f"study storage {masked(storage)}"
    if "not a database" in text or "malformed" in text:
        why = (
            "is not a readable SQLite database (corrupt, or not an SQLite file): move it aside or pass another "
            "hydra.sweeper.storage=..."
        )
    elif "readonly" in text or "read-only" in text:
        why = "is read-only, and this command writes to the study: make the file (and its directory) writable"
    elif "unable to open" in text:
        why = "cannot be opened (a missing directory, or no permission)"
    elif isinstance(e, ImportError):
        why = f"needs a database driver that is not installed ({e})"
    else:
        root = next((c for c in reversed(chain) if "sqlalchemy" in type(c).__module__ or "sqlite" in str(c)), e)
        why = f"cannot be used: {type(root).__name__}: {first_line(root, '')}"
    return StudyStorageError(scrub(f"{where} {why}", storage))


# Seconds to wait before each new attempt of a storage call that failed: rides out a database server's
# restart or a busy lock (15 s in all); after that the sweep stops in one line.
STORAGE_WAITS = (1, 2, 4, 8)


def retrying(storage: Any, call, *args, **kwargs):
    """call(*args, **kwargs), tried again after each of STORAGE_WAITS while it fails with a storage error.
    A permanent error (a corrupt or read-only file) or the last failure raises StudyStorageError."""
    for wait in (*STORAGE_WAITS, None):
        try:
            return call(*args, **kwargs)
        except storage_errors() as e:
            if wait is None or _permanent(e):
                raise storage_error(storage, e) from None
            log.warning("%s; trying again in %d s", storage_error(storage, e), wait)
            time.sleep(wait)


# --- the study ----------------------------------------------------------------------------------


def ensure_study(
    storage: str,
    study_name: str,
    directions: list[str],
    metric_names: list[str] | None = None,
    sampler=None,
    pruner=None,
    attempts: int = 5,
):
    """Create the study (or load it) before workers race for it; safe to call from several processes.
    Names its objectives (metric_names: the dashboard then says val_nll, not "Objective 0").
    Raises StudyStorageError for a storage that cannot be used (corrupt, read-only, unreachable,
    created with other directions)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        prepare_storage(storage)
        opened = open_storage(storage)
    except OSError as e:
        raise storage_error(storage, e) from None
    for attempt in range(attempts):
        try:
            try:
                study = optuna.create_study(
                    storage=opened,
                    study_name=study_name,
                    directions=directions,
                    sampler=sampler,
                    pruner=pruner,
                    load_if_exists=True,
                )
                have = [d.name for d in study.directions]
            except ValueError as e:  # load_if_exists with other directions
                if "direction" not in str(e):
                    raise
                have = [d.name for d in optuna.load_study(study_name=study_name, storage=opened).directions]
            if have != [str(d).upper() for d in directions]:
                raise StudyStorageError(
                    f"study {study_name!r} in {masked(storage)} was created to {', '.join(have).lower()}, and this "
                    f"sweep asks to {', '.join(directions).lower()}: its best trial would be the wrong one. Pass "
                    "another hydra.sweeper.study_name=... (or the study's own direction)"
                )
            if metric_names and study.metric_names != list(metric_names):
                import warnings

                with warnings.catch_warnings():  # stable since Optuna 3.2, still flagged experimental
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.set_metric_names(list(metric_names))
            return study
        except SQLAlchemyError as e:  # two processes creating the schema or the study at once: retry
            if attempt == attempts - 1 or _permanent(e):
                raise storage_error(storage, e) from None
            log.warning("creating study %s: %s; retrying", study_name, type(e).__name__)
            time.sleep(0.5 + attempt)
        except storage_errors() as e:
            raise storage_error(storage, e) from None


def load_existing_study(storage: str, study_name: str, sampler=None, pruner=None):
    """The study, or StudyStorageError (no such file or study, a corrupt file, ...). Never creates a file."""
    import optuna

    path = storage_file(storage)
    if path is not None and not path.is_file():
        raise StudyStorageError(
            f"no study storage at {path} (run `create` or the sweep first, or pass hydra.sweeper.storage=...)"
        )
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(storage), sampler=sampler, pruner=pruner)
    except KeyError:
        raise StudyStorageError(
            f"no study {study_name!r} in {masked(storage)} (run `create` or the sweep first)"
        ) from None
    except storage_errors() as e:
        raise storage_error(storage, e) from None


def study_summary(study) -> str:
    from collections import Counter

    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    parts = [f"{n} {s.lower()}" for s, n in sorted(counts.items())] or ["no trials yet"]
    return f"study {study.study_name}: " + ", ".join(parts)


def _run_dirs(sweep_dirs: Iterable[str], study_name: str) -> dict[int, tuple[str, Any]]:
    """trial number -> (run dir, results.json status) for this study's jobs under the given sweep dirs."""
    found = {}
    for sweep_dir in sweep_dirs:
        for res in sorted(Path(sweep_dir).glob("*/results.json")):
            try:
                r = json.loads(res.read_text())
            except (OSError, ValueError):
                continue
            if r.get("study") == study_name and r.get("trial") is not None:
                found[int(r["trial"])] = (str(res.parent), r.get("status"))
    return found


def export_trials(storage: str, study_name: str, out: Path, objectives: list[str] | None = None) -> Path:
    """Write the study's trials_dataframe to CSV, with each trial's run_dir and results.json status."""
    study = load_existing_study(storage, study_name)
    df = study.trials_dataframe()
    names = objectives or study.metric_names or ["value"]
    # one column per objective, named after it (Optuna writes value, values_0, ... or value_<metric name>)
    renames = {"value": names[0], **{f"values_{i}": n for i, n in enumerate(names)}}
    renames.update({f"{prefix}_{n}": n for n in names for prefix in ("value", "values")})
    df = df.rename(columns={k: v for k, v in renames.items() if k in df.columns and k != v})
    if "user_attrs_sweep_dir" in df.columns:
        runs = _run_dirs(df["user_attrs_sweep_dir"].dropna().unique(), study.study_name)
        df["run_dir"] = [runs.get(n, (None, None))[0] for n in df["number"]]
        df["run_status"] = [runs.get(n, (None, None))[1] for n in df["number"]]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, out)
    return out
