"""The run's programs compiled ahead of time: the train state's initialiser, the train step and the eval
step, in two threads that start as soon as set-up knows the head's shapes (``setup(head_ready=)``) and
compile while the towers are built and extract the features.

Every shape they take is known before the first feature is, and before a tiny tower is written: the
state's from the head's config (the data's puzzles and classes), a batch's from the towers' widths (their
config files, or the tiny towers' configs; ``features.batches``, as the compile-only report builds it)
and the batch sizes. XLA compiles a program on one core, so on a cold run the compilation runs beside
the set-up's and the extraction's work instead of following it (issue 30; docs/performance.md). A run
that computes its features inside the step has nothing to overlap: it compiles the same programs as soon
as its towers are loaded.

The jitted steps keep the executables: their later calls with concrete arrays of the same shapes and
shardings compile nothing (a jitted function's ``lower(...).compile()`` fills the cache its calls read).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import time
from typing import Any

import jax
import numpy as np

from smartvlm_jax import parallel
from smartvlm_jax.features import batches
from smartvlm_jax.train.group import Group, Steps
from smartvlm_jax.train.state import TrainState, shardings


@dataclasses.dataclass(frozen=True)
class Initialiser:
    """The train state's compiled initialiser and its argument (seed or seeds), and the abstract state
    (``jax.ShapeDtypeStruct`` leaves carrying their shardings)."""

    compiled: Any
    arg: np.ndarray
    abstract_state: TrainState

    def state(self) -> TrainState:
        """A fresh train state, replicated over the mesh."""
        return self.compiled(self.arg)


def trace_initialiser(group: Group, tx) -> tuple[jax.stages.Traced, np.ndarray]:
    """(The group's initialiser (``Group.initialiser``) traced, its argument): the one trace gives both
    the abstract state (``out_info``) and the program."""
    init, arg = group.initialiser(tx)
    return jax.jit(init, out_shardings=parallel.replicated(group.run.mesh)).trace(arg), arg


# The initialiser runs once: on CPU, LLVM's -O1 compiles it in two thirds of the time of XLA's default, and
# it still runs in milliseconds (benchmarks/compile_time.py). The steps keep the default: -O1 made the
# paper head's train step 13 % slower.
CPU_INITIALISER_OPTIONS = {"xla_backend_optimization_level": 1}


def compile_initialiser(traced: jax.stages.Traced, arg: np.ndarray, platform: str = "cpu") -> Initialiser:
    """The initialiser's executable for devices of ``platform`` (on CPU with ``CPU_INITIALISER_OPTIONS``)."""
    options = CPU_INITIALISER_OPTIONS if platform == "cpu" else None
    return Initialiser(traced.lower().compile(options), arg, traced.out_info)


def abstract_batch(group: Group, towers=None) -> dict[str, jax.ShapeDtypeStruct]:
    """A train batch as ``run.to_global`` gives it: stored features (``train.GatherCached``'s keys and
    dtypes), or with ``towers`` (features computed in the step) the image pipeline's batch."""
    run = group.run
    data = parallel.batch_sharding(run.mesh)
    if towers is not None:
        return batches.image_batch(towers, run.config.batch_size, data)
    dims = (run.model_cfg.vision_dim, run.model_cfg.text_dim)
    return batches.variant_feature_batch(dims, run.config.model.variant, run.config.batch_size, data)


def compile_steps(
    group: Group, tx, total_steps: int, abstract_state: TrainState, towers=None, tower_params=None
) -> Steps:
    """The group's jitted steps (``Group.steps``), compiled for the run's batch and eval batch."""
    steps = group.steps(tx, total_steps, towers, shardings(abstract_state))
    active = np.ones(len(group.runs), bool)
    batch = abstract_batch(group, towers)
    steps.compile(abstract_state, batch, tower_params, active, group.run.config.eval_batch_size)
    return steps


class Ahead:
    """The initialiser and the steps, compiled in two worker threads (XLA compiles a program on one
    core), started at construction.

    ``initialiser()`` and ``steps()`` wait for theirs (re-raising what the compilation raised);
    ``waited`` adds up the seconds the caller spent waiting. All three tasks start at once (two threads,
    the initialiser's compilation waiting for the trace), so a run stopped meanwhile exits once the
    compilations under way end (Python joins the threads at exit)."""

    def __init__(self, group: Group, tx, total_steps: int, towers=None, tower_params=None):
        pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="compile-ahead")
        compiles = group.run.compiles  # the run's record of what XLA compiled: these threads' too
        recorded = compiles.thread if compiles is not None else contextlib.nullcontext

        def in_record(fn, *args):
            with recorded():
                return fn(*args)

        traced = pool.submit(in_record, trace_initialiser, group, tx)
        platform = group.run.mesh.devices.flat[0].platform
        self._init = pool.submit(lambda: in_record(compile_initialiser, *traced.result(), platform))
        self._steps = pool.submit(
            lambda: in_record(
                compile_steps, group, tx, total_steps, traced.result()[0].out_info, towers, tower_params
            )
        )
        pool.shutdown(wait=False)  # the threads end once the three are done
        self.waited = 0.0

    def _wait(self, future: concurrent.futures.Future):
        start = time.perf_counter()
        try:
            return future.result()
        finally:
            self.waited += time.perf_counter() - start

    def initialiser(self) -> Initialiser:
        return self._wait(self._init)

    def steps(self) -> Steps:
        return self._wait(self._steps)

    def predict(self, *args):
        """The compiled predict step (``Steps.predict``) on ``args``."""
        return self.steps().predict(*args)
