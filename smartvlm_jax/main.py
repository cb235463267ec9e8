"""Entry point: ``python -m smartvlm_jax.main --config configs/NAME.py --workdir DIR [--config.FIELD=VALUE]``.

Parses flags, starts multi-process JAX when the config asks for it, and hands over to the trainer. A rerun
with the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import logging as py_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding everything of the run.")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show Python's traceback for input errors (see cli.py).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraryInfo(py_logging.Filter):
    """Keep orbax's per-save INFO chatter out of the console; its warnings and errors still show."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        return record.levelno >= py_logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    logging.get_absl_handler().addFilter(_QuietLibraryInfo())
    from smartvlm_jax import parallel  # JAX is touched only after the flags are known

    parallel.initialize_distributed(config)
    import jax

    logging.info("JAX %s on %d devices (%s)", jax.__version__, jax.device_count(), jax.devices()[0].platform)
    from smartvlm_jax import cli, train

    status = cli.run(lambda: train.train_and_evaluate(config, _WORKDIR.value), traceback=_TRACEBACK.value)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    app.run(main)
