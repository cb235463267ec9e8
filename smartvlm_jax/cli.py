"""How the command-line tools answer the project's input errors: one line, ``error: ...``, exit status 1.

A config field, a path, a malformed CSV row, a bad image or a refused checkpoint is the user's to fix, and
the message names it; Python's traceback would bury that line, so it is shown only with ``--traceback``.
Errors outside these kinds (bugs, a NaN loss, a dead peer) keep their traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

# ValueError covers MalformedRowError and config checks; OSError covers FileNotFoundError, FileExistsError,
# NotADirectoryError and BadImageError; KeyError a missing checkpoint entry.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError)
TRACEBACK_HELP = "show Python's traceback for input errors instead of one line"


def positive_int(text: str) -> int:
    """argparse ``type`` for counts: an int >= 1, or argparse's usage error naming the flag."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def run(
    fn: Callable[[], object],
    traceback: bool = False,
    *,
    also: tuple[type[BaseException], ...] = (),
    prefix: str = "",
) -> int:
    """Calls ``fn``; 0, or 1 after printing ``error: <prefix><message>`` for an input error (one of
    :data:`INPUT_ERRORS` or ``also``), which ``traceback`` re-raises instead."""
    try:
        fn()
    except (*INPUT_ERRORS, *also) as e:
        if traceback:
            raise
        message = str(e) if not isinstance(e, KeyError) else f"missing {e}"
        print(f"error: {prefix}{message}", file=sys.stderr)
        return 1
    return 0
