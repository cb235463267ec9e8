"""The roofline estimator's calibration: run for this CPU as its target, against the measured time.

The report's roofline time (:func:`report.roofline_s`: max(FLOPs / peak FLOP/s, bytes accessed / memory
bandwidth)) is only as good as its figures. To check it, the towers' program is compiled for this host's
CPU (``targets.parse("cpu")``: the same :func:`programs.plan` and :func:`report.compile_at` a TPU target
goes through), its roofline time is taken with this host's peaks (:func:`host_chip`: measured by the
caller, e.g. ``benchmarks/compile_only.py --calibrate``, from a large matmul and a large copy), and the very
executable whose figures were read is run and timed. :class:`Calibration` holds both times and their ratio.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from smartvlm_jax.aot import report
from smartvlm_jax.aot.programs import Program
from smartvlm_jax.aot.targets import Chip


def host_chip(peak_flops: float, bandwidth: float, how: str) -> Chip:
    """This CPU as a roofline target: ``peak_flops`` (FLOP/s) and memory ``bandwidth`` (bytes/s), both
    > 0 (ValueError otherwise), ``how`` they were obtained (measured or documented). No HBM: every batch
    fits (:func:`report.fits`)."""
    if not (peak_flops > 0 and bandwidth > 0):
        raise ValueError(f"host peaks must be > 0: {peak_flops} FLOP/s, {bandwidth} bytes/s")
    return Chip("cpu", "cpu", 0.0, float(peak_flops), float(bandwidth), description=f"this CPU ({how})")


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The estimator's figures for one program at ``batch`` (per device) on ``chip``, and the measured
    seconds per call of the same executable. ``ratio`` = measured / roofline (1: exact; the roofline is a
    lower bound, so > 1 is expected)."""

    program: str
    batch: int
    flops: float
    bytes_accessed: float
    chip: Chip
    roofline_s: float
    measured_s: float

    @property
    def ratio(self) -> float:
        return self.measured_s / self.roofline_s if self.roofline_s > 0 else float("inf")

    @property
    def bound(self) -> str:
        """Which roof the estimate sits on: "compute" or "memory"."""
        compute = self.flops / self.chip.peak_flops
        return "compute" if compute >= self.bytes_accessed / self.chip.hbm_bandwidth else "memory"

    def within(self, factor: float) -> bool:
        """Whether the roofline predicts the measured time within ``factor`` either way."""
        return 1 / factor <= self.ratio <= factor

    def to_json(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "batch": self.batch,
            "flops": self.flops,
            "bytes_accessed": self.bytes_accessed,
            "peak_flops": self.chip.peak_flops,
            "bandwidth": self.chip.hbm_bandwidth,
            "chip": self.chip.description,
            "roofline_s": self.roofline_s,
            "measured_s": self.measured_s,
            "ratio": self.ratio,
            "bound": self.bound,
        }


def calibration(figures: report.Compiled, chip: Chip, measured_s: float, program: str = "") -> Calibration:
    """The roofline time of ``figures`` (:func:`report.compile_at`'s) on ``chip`` beside ``measured_s``
    (seconds per call, > 0; ValueError otherwise)."""
    if not measured_s > 0:
        raise ValueError(f"measured seconds must be > 0, got {measured_s}")
    return Calibration(
        program,
        figures.batch,
        figures.flops,
        figures.bytes_accessed,
        chip,
        report.roofline_s(figures, chip),
        float(measured_s),
    )


class _Compiled:
    """A lowered program whose ``compile()`` returns the executable already compiled, so that
    :func:`report.compile_at` reads its figures from the executable that is then timed."""

    def __init__(self, lowered, compiled):
        self._lowered, self._compiled = lowered, compiled

    def compile(self, *args, **kwargs):  # report.compile_at passes the target's options: compiled already
        return self._compiled

    def cost_analysis(self):
        return self._lowered.cost_analysis()


def compile_program(program: Program, batch: int) -> tuple[report.Compiled, Any]:
    """(the estimator's figures, the executable) of ``program`` at per-device ``batch`` on this host (one
    compile). The figures' ``compile_s`` excludes the compile itself."""
    lowered = program.lower(batch)
    compiled = lowered.compile()
    once = dataclasses.replace(program, lower=lambda _: _Compiled(lowered, compiled))
    return report.compile_at(once, batch, 1), compiled


def random_args(executable, seed: int = 0) -> tuple:
    """Concrete arguments for ``executable`` (a ``jax.stages.Compiled``), on its input shardings: floats
    normal * 0.02 (weights' scale), integers 0 (valid token ids), uint8 images uniform, booleans True."""
    rng = np.random.default_rng(seed)
    args, _ = executable.in_avals
    shardings, _ = executable.input_shardings

    def make(aval, sharding):
        dtype = np.dtype(aval.dtype)
        if dtype == np.uint8:
            value = rng.integers(0, 256, aval.shape, dtype=np.uint8)
        elif jnp.issubdtype(aval.dtype, jnp.floating):
            value = (0.02 * rng.standard_normal(aval.shape, dtype=np.float32)).astype(aval.dtype)
        elif dtype == np.bool_:
            value = np.ones(aval.shape, bool)
        else:
            value = np.zeros(aval.shape, dtype)
        return jax.device_put(value, sharding)

    return jax.tree.map(make, args, shardings)
