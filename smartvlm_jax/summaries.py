"""Where a run's numbers go: TensorBoard event files, a JSON-lines log, stage timings and XLA compilations.

TensorBoard events are written with tensorboardX, a small pure-Python writer of TensorBoard's event format.
clu's ``metric_writers`` cannot write them without TensorFlow: the package's ``__init__`` imports its
``SummaryWriter`` (``clu/metric_writers/tf/summary_writer.py``: ``import tensorflow``), so even its PyTorch
writer (which needs torch, also kept out of the runtime) cannot be imported without it. clu's ``metrics``
collections, which need neither, are used in the training step. tensorboardX itself tries ``import torch``
when imported (to accept torch tensors, which a run never logs): :func:`summary_writer_class` keeps PyTorch
out. Console progress: :mod:`smartvlm_jax.console`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import resource
import sys
import threading
import time
from collections.abc import Iterator, Mapping

import jax.monitoring
import numpy as np

from smartvlm_jax.workdir import Workdir

log = logging.getLogger(__name__)


class RunWriter:
    """Scalars to ``<workdir>/tensorboard`` and ``<workdir>/log.jsonl``; a no-op off the lead process."""

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True):
        self._enabled = enabled
        self._tb = None
        self._log = None
        if enabled:
            workdir = Workdir(workdir)
            self._tb = summary_writer_class()(str(workdir.tensorboard))
            self._log = open(workdir.log, "a")  # closed in close()

    def write_scalars(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
        if not self._enabled:
            return
        values = {f"{prefix}{k}": float(np.asarray(v)) for k, v in scalars.items()}
        for name, value in values.items():
            self._tb.add_scalar(name, value, step)
        self._log.write(json.dumps({"step": int(step), "time": time.time(), **values}) + "\n")
        self._log.flush()

    def close(self) -> None:
        if self._enabled:
            self._tb.close()
            self._log.close()


def summary_writer_class() -> type:
    """tensorboardX's ``SummaryWriter``, imported (only where events are written) without PyTorch.

    ``tensorboardX.writer`` runs ``import torch`` at import time, only to accept torch tensors; where torch
    is installed (the dev and benchmark environments) that import cost every training process ~1.3 s of
    CPU and ~2 s of wall time. While tensorboardX is first imported, ``sys.modules["torch"]`` is None, which
    makes ``import torch`` raise ImportError, the case tensorboardX handles (numpy arrays only). A process
    that has imported either already is left as it is.
    """
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


def read_log(path: str | os.PathLike) -> dict[str, dict[int, float]]:
    """The scalars of a ``log.jsonl`` as series: name ("train/loss", "val/S_acc") -> {step: value}.

    A resumed run logs some steps again; the last record of a step wins. A missing file gives {}.
    """
    series: dict[str, dict[int, float]] = collections.defaultdict(dict)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            for name, value in record.items():
                if name not in ("step", "time"):
                    series[name][int(record["step"])] = value
    return dict(series)


class StageTimes:
    """Wall seconds of a run's stages, with counts (samples, steps, saves) and their rates.

    ``with times("eval"): ...`` adds the block's seconds to the stage; the yielded dict takes counts
    (``counts["steps"] = 10``) that :meth:`record` turns into rates (``steps_per_s``). One per run, carried
    on the run's state; a resumed run records what its own process did.
    """

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[dict[str, float]]:
        counts: dict[str, float] = {}
        start = time.perf_counter()
        try:
            yield counts
        finally:
            self.add(name, time.perf_counter() - start, **counts)

    def add(self, name: str, seconds: float, **counts: float) -> None:
        entry = self.stages.setdefault(name, {"seconds": 0.0})
        entry["seconds"] += seconds
        for unit, n in counts.items():
            entry[unit] = entry.get(unit, 0) + n

    def record(self) -> dict:
        """``{stage: {"seconds", count, count_per_s}, ..., "peak_rss_kib"}``, also logged a line each."""
        out: dict = {}
        for name, entry in self.stages.items():
            out[name] = dict(entry)
            for unit in (k for k in entry if k in ("samples", "steps")):
                out[name][f"{unit}_per_s"] = entry[unit] / max(entry["seconds"], 1e-9)
            shown = " ".join(f"{k}={v:.4g}" for k, v in out[name].items() if k != "seconds")
            log.debug("timing %s: %.2f s %s", name, entry["seconds"], shown)
        # ru_maxrss: KiB on Linux; it counts the memmapped cache pages this process has resident too
        out["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        log.debug("timing peak resident memory: %.1f MiB", out["peak_rss_kib"] / 1024)
        return out


# JAX's monitoring events (jax/_src/dispatch.py, compiler.py): the first wraps every executable's
# compile-or-load, the second fires inside it when the executable came from the compilation cache.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@dataclasses.dataclass
class CompileLog:
    """The executables XLA compiled and those loaded from the persistent compilation cache, while open.

    ``with CompileLog() as compiles: ...`` listens to JAX's monitoring events; ``compiled`` holds
    (function name, seconds) of each real compilation, ``loaded`` those the cache served. An executable
    found in the process's own in-memory caches produces no event and is in neither. Only the thread that
    opened the log is recorded (JAX compiles in the calling thread), and the threads that compile for it
    inside ``with log.thread():`` (``train.ahead``): runs side by side in threads (a sweep's rows) each
    keep their own.
    """

    compiled: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    loaded: list[tuple[str, float]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self._hit = threading.local()  # compilations on several threads: each its own hit flag
        self._threads: set[int] = set()  # the threads recorded

    def _on_event(self, event: str, **_: object) -> None:
        if event == CACHE_HIT_EVENT and threading.get_ident() in self._threads:
            self._hit.value = True

    def _on_duration(self, event: str, seconds: float, *, fun_name: str = "?", **_: object) -> None:
        if event == BACKEND_COMPILE_EVENT and threading.get_ident() in self._threads:
            hit, self._hit.value = getattr(self._hit, "value", False), False
            (self.loaded if hit else self.compiled).append((fun_name, seconds))

    @contextlib.contextmanager
    def thread(self) -> Iterator[None]:
        """Record the calling thread's compilations too, inside the block (a thread compiling for a run)."""
        ident = threading.get_ident()
        self._threads.add(ident)
        try:
            yield
        finally:
            self._threads.discard(ident)

    def __enter__(self) -> CompileLog:
        self._threads.add(threading.get_ident())
        jax.monitoring.register_event_listener(self._on_event)
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        return self

    def __exit__(self, *exc: object) -> None:
        jax.monitoring.unregister_event_listener(self._on_event)
        jax.monitoring.unregister_event_duration_listener(self._on_duration)

    def record(self) -> dict:
        """Counts, seconds and function names of both lists, for results.json's "xla"."""
        return {
            "compiled": len(self.compiled),
            "compile_seconds": sum(s for _, s in self.compiled),
            "compiled_names": sorted({name for name, _ in self.compiled}),
            "loaded": len(self.loaded),
            "load_seconds": sum(s for _, s in self.loaded),
            "loaded_names": sorted({name for name, _ in self.loaded}),
        }
