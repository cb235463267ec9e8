"""Entry point: ``python -m smartvlm_jax.main --config configs/NAME.py --workdir DIR [--config.FIELD=VALUE]``,
or the console script ``smartvlm-train`` with the same flags.

Parses flags, routes log lines (``console.configure``: the project's lines and actionable warnings on the
console, every line in ``DIR/run.log``; absl's ``--verbosity``/``-v`` 1 shows everything), starts
multi-process JAX when the config asks for it, and hands over to the trainer. A rerun with the same
workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

from absl import app, flags
from ml_collections import config_flags

from smartvlm_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:ARG]).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding everything of the run (or sweep).")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show Python's traceback for input errors (see cli.py).")
flags.mark_flags_as_required(["config", "workdir"])

# The sweep's own fields (configs/paper.py; smartvlm_jax.sweep), which a single run refuses. Here, not in
# sweep.py: importing that under python -m smartvlm_jax.main would define this module's flags twice.
SWEEP_FIELDS = ("seeds", "rows", "baseline", "row_overrides", "grid", "member_plots", "parallel_rows")

log = logging.getLogger("smartvlm_jax.main")  # (__name__ is "__main__" under python -m)


def run_job(job: str, argv: list[str]) -> None:
    """The part every job shares: route the log lines, start multi-process JAX when the config asks, then
    call ``job`` ("module:function", imported only then, so JAX loads after the console is set up) with
    the config and the workdir; an input error becomes one line and exit status 1 (``cli.run``)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    from smartvlm_jax import workdir

    # The workdir is checked (no glob characters, a writable folder) before the console opens run.log in it.
    check = lambda: workdir.check_writable(os.path.abspath(_WORKDIR.value), "--workdir")
    status = cli.run(check, traceback=_TRACEBACK.value)
    if not status and "model" in config:  # the head's choices named by their flags, before any work
        from smartvlm_jax import variants

        flags_of = ("--config.model.variant", "--config.model.head")
        model = config.model
        status = cli.run(
            lambda: variants.check(model.variant, model.head, flags_of),
            traceback=_TRACEBACK.value,
        )
    if status:
        sys.exit(status)
    from smartvlm_jax import console  # light: tqdm and logging; JAX must not load before this

    lines = console.configure(_WORKDIR.value, flags.FLAGS.verbosity)
    log.debug("command: %s", " ".join(sys.argv))
    from smartvlm_jax import parallel  # JAX is touched only after the flags are known

    parallel.initialize_distributed(config)
    import jax

    lines.set_process(jax.process_index())
    devices = jax.devices()
    on = f"{len(devices)} {devices[0].platform} device{'s' if len(devices) > 1 else ''}"
    log.info("JAX %s on %s; every log line: %s", jax.__version__, on, lines.run_log)
    module, function = job.split(":")
    fn = getattr(importlib.import_module(module), function)
    status = cli.run(lambda: fn(config, _WORKDIR.value), traceback=_TRACEBACK.value)
    if status:
        sys.exit(status)


def main(argv: list[str]) -> None:
    run_job("smartvlm_jax.train:train_and_evaluate", argv)


def run(
    argv: Sequence[str] | None = None,
    job: Callable[[list[str]], None] = main,
    other: tuple[Sequence[str], str] | None = (SWEEP_FIELDS, "smartvlm-sweep"),
    needs: tuple[Sequence[str], str] | None = None,
) -> None:
    """``smartvlm-train`` (and ``python -m smartvlm_jax.main``): makes the config's package importable,
    then parses the flags and runs ``job`` (the training job; ``smartvlm_jax.sweep`` passes its own).

    A mistake in ``--config`` or a ``--config.FIELD`` (a missing file, a misspelt field, a field of
    ``other``'s (fields, command): by default the sweep's; a config without the fields ``needs``) is one
    ``error:`` line naming the flag and the likeliest fix (``cli.parse_absl_flags``), before anything runs.
    """
    argv = list(sys.argv if argv is None else argv)
    cli.make_configs_importable(argv)
    app.run(job, argv=argv, flags_parser=lambda a: cli.parse_absl_flags(a, other, needs))


if __name__ == "__main__":
    run()
