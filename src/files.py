"""Writing files so that a crash, a power loss or a full disk never leaves half of one.

- `replace_atomically(path)`: the one way the harness (re)writes a file. The content goes to a
  temporary file beside it, which is flushed to disk (fsync) and renamed onto `path`; the directory
  is then flushed too, so that after a power loss `path` holds the old or the new content, never an
  empty or partial file. On any failure the temporary file is removed: a full disk keeps no half copy.
- `WriteError`: a write that failed for a reason the user has to fix (disk full, quota, read-only
  file system), as one line; `write_error(e)` recognises one, also inside torch's RuntimeError.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from src.errors import UserError

#: What a user fixes by making room or choosing another place, not by changing the code.
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
#: Out of space: an existing file's own blocks may still take a rewrite (see contract.write_results).
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class WriteError(UserError, RuntimeError):
    """A file could not be written: disk full, quota exceeded or a read-only file system; one line."""


def storage_cause(e: BaseException) -> OSError | None:
    """The disk-full / quota / read-only OSError behind e (e itself, or what it was raised from or
    during: torch.save reports a failed write as a RuntimeError raised while handling the OSError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


def write_error(e: BaseException, path: Path | str | None = None) -> WriteError | None:
    """A one-line WriteError for a storage failure behind e (see storage_cause), else None."""
    cause = storage_cause(e)
    if cause is None:
        return None
    where = cause.filename or path
    return WriteError(f"cannot write {where}: {cause.strerror}" if where else cause.strerror)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno != errno.EINVAL:  # a file system that cannot sync a directory (some network mounts)
            raise
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stops_deferred() -> Iterator[None]:
    """Ctrl-C or SIGTERM arriving inside the block takes effect as soon as it ends: a stop never cuts
    a write in half (torch.save interrupted inside its zip writer fails with a RuntimeError of its own,
    and the stop would be lost). Main thread only, where Python runs signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    previous = {s: h for s, h in previous.items() if h is not None}  # None: not set from Python, left alone
    for s in previous:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            os.kill(os.getpid(), caught[0])  # now, to the handler it was meant for


@contextlib.contextmanager
def replace_atomically(path: Path | str, unique: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; write the new content there. On leaving the block the
    file is fsynced, renamed onto `path` and the directory fsynced. On any failure (an exception,
    Ctrl-C) the temporary file is removed and `path` is left as it was; a storage failure (disk
    full, quota, read-only) is raised as its OSError, also when the writer wrapped it.

    unique: a temporary name of this process's own, for files that several processes may write at
    once without a lock (the native library cache). Run directories are locked, so their writers
    use one fixed name (`<name>.tmp`), which the next write replaces should a kill leave one behind.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp" if unique else f"{path.name}.tmp")
    try:
        with stops_deferred():
            yield tmp
            fsync_file(tmp)
            os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        cause = storage_cause(e)
        if cause is not None:  # named by the file meant, not its temporary name (or none, from torch)
            raise OSError(cause.errno, cause.strerror, str(path)) from None
        raise
    fsync_dir(path.parent)
