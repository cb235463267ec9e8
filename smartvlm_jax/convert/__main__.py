"""``python -m smartvlm_jax.convert {hf,reference} ...``: dispatches to the converter named first.

``hf``: Hugging Face tower directory -> converted tower (smartvlm_jax.convert.hf).
``reference``: reference PyTorch checkpoint -> our reasoner head (smartvlm_jax.convert.reference).
Each is imported only when chosen, so one converter's dependencies never burden the other.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from smartvlm_jax import cli

COMMANDS = {"hf": "smartvlm_jax.convert.hf", "reference": "smartvlm_jax.convert.reference"}


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``COMMAND ARGS...``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = (
        f"usage: {cli.prog('smartvlm_jax.convert')} {{{','.join(COMMANDS)}}} ... (COMMAND --help: its flags)"
    )
    if argv and argv[0] in ("-h", "--help"):
        print(f"{usage}\n\n{__doc__.split(chr(10) + chr(10))[1]}")
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(usage, file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]])
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
