"""Errors meant for the user: the `UserError` base class, the first line of an exception's message, and
the one way a command reports an error (`error: ...` on stderr, exit status 2).

A leaf (the standard library only): every module that raises or reports a user error imports it.
"""

from __future__ import annotations

import sys

#: The exit status of a command that stops on a user error.
USER_ERROR_STATUS = 2


class UserError(Exception):
    """An error whose message is the whole story for the user: one line, no traceback. The project's
    user errors (a bad config value, missing data, a foreign checkpoint, ...) derive from it."""


def first_line(e: BaseException | str, default: str | None = None) -> str:
    """The first non-blank line of an exception's message (or of a text), stripped; `default` when it has
    none (the exception's type name when `default` is None)."""
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()
    return type(e).__name__ if default is None else default


def print_error(message: object) -> int:
    """Print `error: <message>` to stderr; returns USER_ERROR_STATUS, for `return print_error(...)` in a
    command's main and `sys.exit(print_error(...))` elsewhere."""
    print(f"error: {message}", file=sys.stderr)
    return USER_ERROR_STATUS
