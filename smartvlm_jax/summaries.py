"""Where a run's numbers go: TensorBoard event files, a JSON-lines log, and console progress.

clu's ``metric_writers`` (and ``periodic_actions``, which imports them) import TensorFlow at package
import time; this project keeps TensorFlow out of its runtime, so events are written with tensorboardX
(a small pure-Python writer of the same event format) and progress is reported here. clu's
``metrics`` collections, which need no TensorFlow, are used in the training step.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import time
from collections.abc import Iterator, Mapping

import numpy as np
from absl import logging

from smartvlm_jax.workdir import Workdir


class RunWriter:
    """Scalars to ``<workdir>/tensorboard`` and ``<workdir>/log.jsonl``; a no-op off the lead process."""

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True):
        self._enabled = enabled
        self._tb = None
        self._log = None
        if enabled:
            from tensorboardX import SummaryWriter  # imported only where events are written

            workdir = Workdir(workdir)
            self._tb = SummaryWriter(str(workdir.tensorboard))
            self._log = open(workdir.log, "a")  # noqa: SIM115 - closed in close()

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


class Progress:
    """Console progress: step, steps/s and ETA, every ``every`` steps."""

    def __init__(self, total_steps: int, first_step: int, every: int):
        self._total = total_steps
        self._every = max(every, 1)
        self._last_step = first_step
        self._last_time = time.time()

    def __call__(self, step: int, scalars: Mapping[str, float]) -> None:
        if step % self._every and step != self._total:
            return
        now = time.time()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        eta = (self._total - step) / rate if rate > 0 else float("nan")
        shown = " ".join(f"{k}={float(np.asarray(v)):.4g}" for k, v in scalars.items())
        logging.info("step %d/%d  %.2f steps/s  ETA %.0f s  %s", step, self._total, rate, eta, shown)


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
            logging.info("timing %s: %.2f s %s", name, entry["seconds"], shown)
        # ru_maxrss: KiB on Linux; it counts the memmapped cache pages this process has resident too
        out["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        logging.info("timing peak resident memory: %.1f MiB", out["peak_rss_kib"] / 1024)
        return out
