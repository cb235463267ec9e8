"""How the command-line tools answer the project's input errors: one line, ``error: ...``, exit status 1.

A config field, a path, a malformed CSV row, a bad image or a refused checkpoint is the user's to fix, and
the message names it; Python's traceback would bury that line, so it is shown only with ``--traceback``.
Errors outside these kinds (bugs, a NaN loss, a dead peer) keep their traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

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


def config_file_of(argv: Sequence[str]) -> str | None:
    """The file of ``--config FILE`` / ``--config=FILE[:ARGS]`` in ``argv``, before absl parses it."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1].split(":", 1)[0]
        if arg.startswith("--config="):
            return arg.removeprefix("--config=").split(":", 1)[0]
    return None


def config_import_root(config_file: str) -> str | None:
    """The folder above the package that holds ``config_file`` (``configs/smoke.py`` -> the checkout), or
    None when its folder is no package. The configs import their siblings as ``configs.NAME``: that works
    from any working directory, and from the console script, whose ``sys.path`` lacks the working directory.
    """
    folder = os.path.dirname(os.path.abspath(config_file))
    root = folder
    while os.path.isfile(os.path.join(root, "__init__.py")):
        root = os.path.dirname(root)
    return root if root != folder else None


def make_configs_importable(argv: Sequence[str]) -> None:
    """Put the folder above ``--config``'s package on ``sys.path`` (see :func:`config_import_root`)."""
    config_file = config_file_of(argv[1:])
    root = config_import_root(config_file) if config_file else None
    if root and root not in sys.path:
        sys.path.insert(0, root)
