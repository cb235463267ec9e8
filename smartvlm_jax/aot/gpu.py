"""Compile-only GPU devices: not built yet (issue 27, item 6).

XLA can compile for an NVIDIA GPU that is not there (``jax-cuda12-pjrt`` and ``jax-cuda12-plugin`` 0.10.2
with ``nvidia-cuda-nvcc-cu12``, and a GpuTargetConfigProto describing the GPU); this package does not yet
ship those target descriptions, so a ``gpu:`` target is refused with this module's message.
"""

from __future__ import annotations


def topology(target):
    """RuntimeError: compile-only GPU targets are not supported yet (the GPU figures of the report are
    not available; ``tpu:`` targets are)."""
    raise RuntimeError(
        f"--compile_only={target.text}: compile-only GPU targets are not supported yet (no GPU target "
        "descriptions shipped); use a tpu: target, or benchmarks/gpu/run.sh on a lent GPU"
    )
