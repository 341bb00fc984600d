"""Stopping signals as Ctrl-C: SIGTERM (how schedulers and `kill` stop a process) raises KeyboardInterrupt
like SIGINT, so a run or a sweep records "interrupted" either way.

Python runs a signal handler between two steps of whatever code is executing; when that code is a
finalizer (a `__del__`, a weakref callback: SQLAlchemy and torch run them during garbage collection) the
KeyboardInterrupt it raises is printed as "Exception ignored in ..." and lost, and the process goes on as
if never stopped. `install` therefore also hands such a lost interrupt back: the signal is sent again, and
its handler runs outside the finalizer."""

from __future__ import annotations

import os
import signal
import sys
import threading

_STOPPING = (signal.SIGINT, signal.SIGTERM)
_last_signal = signal.SIGINT
_previous_hook = sys.unraisablehook  # what reports every other unraisable exception (pytest has its own)


def raise_keyboard_interrupt(signum, frame):
    global _last_signal
    _last_signal = signum
    raise KeyboardInterrupt


def _deliver_again(unraisable) -> None:
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        # Sent again from another thread a moment later, so that its handler runs after this hook has
        # returned (a handler that runs inside the hook is lost the same way). The handler in force then
        # decides: if the process has since chosen to ignore stops (bookkeeping that must finish), it does.
        timer = threading.Timer(0.01, os.kill, (os.getpid(), _last_signal))
        timer.daemon = True
        timer.start()
        return
    _previous_hook(unraisable)


def install() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, also when they land in a finalizer. Only the main
    thread can set signal handlers; elsewhere (some launchers run jobs in threads) nothing changes."""
    try:
        for sig in _STOPPING:
            if signal.getsignal(sig) is not signal.SIG_IGN:  # a process started to ignore Ctrl-C keeps doing so
                signal.signal(sig, raise_keyboard_interrupt)
    except ValueError:
        return
    global _previous_hook
    if sys.unraisablehook is not _deliver_again:
        _previous_hook, sys.unraisablehook = sys.unraisablehook, _deliver_again


def restore(handlers: tuple) -> None:
    """Put back the (SIGINT, SIGTERM) handlers `install` replaced, from the main thread only."""
    try:
        for sig, handler in zip(_STOPPING, handlers):
            if handler is not None:
                signal.signal(sig, handler)
    except ValueError:
        pass
