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
_COMPILE_ONLY = flags.DEFINE_string(
    "compile_only",
    None,  # (an empty --compile_only= is refused by the target parser, not taken as "train")
    "Compile every program of the run for TARGET (tpu:v5e:2x4, tpu:v4:2x2x2, gpu:h100:1x8, cpu) on this "
    "machine and report what fits and what it costs; nothing is extracted or trained (docs/tpu.md).",
)
_COMPILE_SEARCH = flags.DEFINE_integer(
    "compile_only_search", 6, "With --compile_only: compiles per program spent finding its largest batch."
)
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
    if _COMPILE_ONLY.value is None:  # (compile-only targets use libtpu's topologies, not a TPU client)
        cli.keep_jax_off_absent_accelerators()
    from smartvlm_jax import workdir

    # The workdir is checked (no glob characters, a writable folder) before the console opens run.log in it.
    check = lambda: workdir.check_writable(_WORKDIR.value and os.path.abspath(_WORKDIR.value), "--workdir")
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

    created = not os.path.exists(_WORKDIR.value)  # by this command (the console's run.log comes first)
    lines = console.configure(_WORKDIR.value, flags.FLAGS.verbosity)
    log.debug("command: %s", " ".join(sys.argv))
    if _COMPILE_ONLY.value is not None:  # one local process compiling for devices it does not have
        run_compile_only(job, config)
        return
    from smartvlm_jax import parallel  # JAX is touched only after the flags are known

    parallel.initialize_distributed(config)
    import jax

    lines.set_process(jax.process_index(), wait_for_lock=True)  # a run refused by the lock writes no log
    devices = jax.devices()
    on = f"{len(devices)} {devices[0].platform} device{'s' if len(devices) > 1 else ''}"
    # (run.log is named in the closing summary: a run refused by its checks, below, never writes one)
    log.info("JAX %s on %s", jax.__version__, on)
    module, function = job.split(":")
    fn = getattr(importlib.import_module(module), function)
    status = cli.run(lambda: fn(config, _WORKDIR.value), traceback=_TRACEBACK.value)
    if status:
        if created:
            remove_if_only_logs(_WORKDIR.value)
        sys.exit(status)


def remove_if_only_logs(folder: str) -> None:
    """Remove ``folder`` when it holds nothing but run logs: a refused command leaves no workdir behind."""
    names = os.listdir(folder) if os.path.isdir(folder) else None
    if names is not None and all(n.startswith("run.") and n.endswith(".log") for n in names):
        logging.shutdown()  # (closes run.log)
        for name in names:
            os.remove(os.path.join(folder, name))
        os.rmdir(folder)


def run_compile_only(job: str, config) -> None:
    """``--compile_only``: the run's (or, for the sweep's ``job``, every row's) programs compiled for the
    target, the report written; a program that does not fit is one error line and exit status 1."""
    from smartvlm_jax.aot import targets

    status = cli.run(lambda: targets.parse(_COMPILE_ONLY.value), traceback=_TRACEBACK.value)
    if status:
        sys.exit(status)
    targets.compile_only_environment()  # before JAX's first backend call: an installed libtpu stays idle
    from smartvlm_jax import aot

    compile_job = aot.compile_run
    if job.startswith("smartvlm_jax.sweep"):  # by name: the sweep imports this module
        compile_job = importlib.import_module("smartvlm_jax.sweep").compile_only
    options = dict(search_budget=_COMPILE_SEARCH.value)
    status = cli.run(
        lambda: compile_job(config, _WORKDIR.value, _COMPILE_ONLY.value, **options),
        traceback=_TRACEBACK.value,
        also=(RuntimeError,),  # a compiler plugin missing: the line names the extra to install
    )
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
