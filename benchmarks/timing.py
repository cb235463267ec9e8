"""The benchmarks' one timing loop: warm-up calls left out, repeated timed calls, each waited for.

A timed call ends only when its work is done: :func:`wait` blocks on every JAX array in what the call
returns and, once PyTorch has started CUDA, synchronises it (both return before the device finishes).
Several functions timed together run in interleaved rounds whose order rotates (:func:`time_rounds`), so
a change of machine load, or one function slowing the next (on CPU a call runs slower right after a
PyTorch call: its OpenMP threads keep spinning, and AMX/AVX-512 work lowers the clock for a while), hits
them alike.

    t = timing.time_call(lambda: f(x), repeats=5)      # one warm-up call, then 5 timed ones
    t.median, t.spread, t.summary(items=batch)          # seconds; (max - min) / median; the JSON fields
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any


def wait(result: Any = None) -> Any:
    """Blocks until the JAX arrays in ``result`` are computed and queued CUDA work is done; returns it."""
    jax = sys.modules.get("jax")
    if jax is not None and result is not None:
        jax.block_until_ready(result)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return result


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds of each timed call (warm-up calls excluded)."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median: 0 for a single call."""
        return (self.max - self.min) / self.median

    def summary(self, items: int = 1) -> dict[str, float]:
        """``median_s``, ``min_s``, ``max_s``, ``spread``, ``per_s`` (items/s at the median), ``repeats``."""
        return {
            "median_s": self.median,
            "min_s": self.min,
            "max_s": self.max,
            "spread": self.spread,
            "per_s": items / self.median,
            "repeats": len(self.times),
        }


def time_rounds(fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Each function's :class:`Timing` over ``repeats`` interleaved rounds, after ``warmup`` calls of each
    (JAX compiles there). Round r starts at the (r mod n)-th function, so each follows each other one
    equally often."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            wait(fn())
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            wait(fns[name]())
            times[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(t)) for name, t in times.items()}


def time_call(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Timing:
    """:func:`time_rounds` of one function: ``warmup`` calls, then ``repeats`` timed ones."""
    return time_rounds({"fn": fn}, repeats, warmup)["fn"]
