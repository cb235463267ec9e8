"""One compile of one program in a fresh child process: a compiler crash ends the child, not the report.

libtpu 0.0.42 segfaults compiling some programs for v6e at batches past the run's (docs/tpu.md, "When libtpu
crashes"); a crash in the process that builds the report would lose every figure already compiled. The
largest batch search therefore compiles in a child (:func:`compile_in_child`): ``python -m
smartvlm_jax.aot.child`` reads the run (config, target, workdir, members) and the program's name and batch
pickled on stdin, rebuilds the plan, compiles that one program with :func:`report.compile_at` and writes its
:class:`report.Compiled` as one JSON line on stdout. A child killed by a signal comes back as a ``Compiled``
with ``crashed`` set to the signal's name; the search takes it as a batch that did not fit.

A fresh interpreter (not ``os.fork()`` of a process with live XLA threads) costs an import of jax and the
plan's tracing (14 s for the paper config on 2 loaded cores), beside one to several minutes per compile
of the towers at a batch past the run's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import time
from typing import Any

# Test-only: a child asked to compile this per-device batch kills itself with SIGSEGV before compiling, so
# tests/test_compile_only.py can crash a child deterministically (libtpu's crash needs a v6e compile that
# takes minutes).
CRASH_AT_ENV = "SMARTVLM_AOT_TEST_SIGSEGV_AT_BATCH"
_RESULT = "compile_at_result: "  # the result line's prefix: jax or libtpu may also write on stdout


@dataclasses.dataclass(frozen=True)
class Run:
    """What a child needs to rebuild a run's plan (:func:`programs.plan`'s arguments): the config, the
    ``--compile_only`` target text, the workdir and the sweep's member count."""

    config: Any  # ml_collections.ConfigDict (pickled to the child as it is)
    target: str
    workdir: str
    members: int = 0


def compiler_name(target: str) -> str:
    """Who crashed, in the report's words: libtpu for a TPU target, else XLA's compiler."""
    return "libtpu" if target.startswith("tpu") else "the XLA compiler"


def compile_in_child(run: Run, program: str, batch: int):
    """:func:`report.compile_at` of ``program`` (a :class:`programs.Program` name) at per-device ``batch``,
    in a fresh ``python -m smartvlm_jax.aot.child``. Returns its :class:`report.Compiled` (``hlo`` empty);
    a child killed by a signal gives ``ok=False``, ``crashed`` the signal's name (e.g. "SIGSEGV"),
    ``error`` "libtpu crashed (SIGSEGV) compiling <program> at batch N per chip" and ``compile_s`` the
    child's seconds. RuntimeError quoting the child's last stderr line when it fails any other way (an
    error compile_at would have raised)."""
    from smartvlm_jax.aot.report import Compiled

    request = pickle.dumps({"run": run, "program": program, "batch": int(batch)})
    # this process's copy of the package, not whichever one the child's working directory would give
    root = str(pathlib.Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "smartvlm_jax.aot.child"], input=request, capture_output=True, env=env
    )
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        why = f"{compiler_name(run.target)} crashed ({name}) compiling {program} at batch {batch} per chip"
        return Compiled(batch, False, time.perf_counter() - start, error=why, crashed=name)
    lines = done.stdout.decode(errors="replace").splitlines()
    found = [line[len(_RESULT) :] for line in lines if line.startswith(_RESULT)]
    if done.returncode or not found:
        tail = done.stderr.decode(errors="replace").strip().splitlines() or ["(no stderr)"]
        raise RuntimeError(
            f"compiling {program} at batch {batch} per chip for {run.target} in a child process failed "
            f"(exit status {done.returncode}): {tail[-1][:400]}"
        )
    return Compiled(**json.loads(found[-1]))


def main() -> None:
    request = pickle.load(sys.stdin.buffer)
    run, name, batch = request["run"], request["program"], request["batch"]
    if os.environ.get(CRASH_AT_ENV) == str(batch):
        os.kill(os.getpid(), signal.SIGSEGV)
    from smartvlm_jax.aot import programs, report, targets

    spec = targets.parse(run.target)
    targets.compile_only_environment()
    import jax

    jax.config.update("jax_enable_compilation_cache", False)  # as compile_run: no TPU program in the cache
    plan = programs.plan(run.config, spec, run.workdir, members=run.members)
    program = next(p for p in plan.programs if p.name == name)
    compiled = report.compile_at(program, batch, plan.mesh.devices.size, options=spec.compiler_options)
    print(_RESULT + json.dumps(compiled.to_json()), flush=True)


if __name__ == "__main__":
    main()
