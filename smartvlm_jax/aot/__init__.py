"""Compile a run for the TPU slice or GPU hosts it will run on, before renting them.

``python -m smartvlm_jax.main --config C --workdir W --compile_only=tpu:v5e:2x4`` (and the sweep's flag)
compiles every program the run would run (each tower's forward at the extraction batch, the train step or
a group's vmapped member step, the eval/predict step) for the target's devices, at the run's shapes and
shardings, on this machine: no accelerator, nothing extracted or trained. It reports what each program
needs per chip against the chip's HBM, its FLOPs and roofline time, the largest batch that fits, and the
run's estimated time (docs/tpu.md and docs/gpu.md, "Will it fit, and what will it cost?").

``targets``  the targets (``tpu:<chip>:<topology>``, ``gpu:<chip>:<hosts>x<gpus>``, ``cpu``) and chip figures
``programs`` the run's programs, built abstractly for the target's mesh
``report``   compiles, figures, the largest batch, the run's estimate, the refusal of what does not fit
``output``   the table, ``compile_report.json`` and ``.md``
``child``    one compile in a fresh process: the search's compiles, so that a compiler crash is reported
"""

from __future__ import annotations

import importlib
import logging
import pathlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ml_collections

    from smartvlm_jax.aot.report import DoesNotFit

log = logging.getLogger(__name__)

__all__ = ["DoesNotFit", "child", "compile_run", "output", "programs", "report", "targets"]
_SUBMODULES = ("calibrate", "child", "gpu", "output", "programs", "report", "targets")


def __getattr__(name: str):
    # Submodules load on first use: a compile child (``python -m smartvlm_jax.aot.child``) imports this
    # package first, and one that is to crash at once (the tests') need not wait for jax to load.
    if name == "DoesNotFit":
        return importlib.import_module(f"{__name__}.report").DoesNotFit
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def compile_run(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    target: str,
    *,
    members: int = 0,
    search_budget: int = 6,
    print_table: bool = True,
    isolate: bool | None = None,
) -> dict:
    """Compile the run of ``config`` for ``target`` (a ``--compile_only`` value), write
    ``<workdir>/compile_report.json`` and ``.md``, print the table, and return the report.

    ``members`` > 0 compiles a group's vmapped member step of that many members instead of the train step.
    ``search_budget``: compiles per program spent finding its largest fitting batch (<= 1: no search).
    ``isolate``: run the search's compiles (past the run's batch) each in a child process
    (:mod:`~smartvlm_jax.aot.child`), so that a compiler crash is reported as a batch that did not fit
    ("libtpu crashed (SIGSEGV) compiling ...") instead of ending this process; None: on TPU targets.
    Raises :class:`DoesNotFit` (a ValueError) naming each program that does not fit, its bytes per chip,
    the HBM and the largest batch that fits, after the report is written; ValueError or RuntimeError
    naming the flag or the missing extra for a bad target."""
    import jax

    from smartvlm_jax.aot import child, output, programs, report, targets

    spec = targets.parse(target)
    targets.compile_only_environment()
    plan = programs.plan(config, spec, workdir, members=members)
    log.info("compile-only for %s: %d programs on %d devices", spec.text, len(plan.programs), plan.mesh.size)
    # Not through XLA's persistent cache: a TPU or GPU executable has no place in this host's CPU cache
    # (and the compile-only clients cannot load one back).
    cached = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        search, isolate = None, spec.platform == "tpu" if isolate is None else isolate
        if isolate:
            run = child.Run(config, target, str(workdir), members)
            search = lambda p, b: child.compile_in_child(run, p.name, b)
        reports = report.analyse(plan, search_budget, compile_search=search)
    finally:
        jax.config.update("jax_enable_compilation_cache", cached)
    refused = report.refusal(plan, reports)
    result = output.to_json(plan, reports, report.run_estimate(plan, reports), refused)
    js, md = output.write(workdir, result)
    if print_table:
        print(output.table(result))
        print(f"\nreport: {js}\n        {md}")
    if refused:
        raise report.DoesNotFit(refused)
    return result
