"""Compile targets: the accelerators a run can be compiled for without them, and their published figures.

A target names a TPU slice (``tpu:v5e:2x4``: libtpu's compile-only topology of that shape), a set of GPU
hosts (``gpu:h100:2x8``: 2 hosts of 8 GPUs, XLA's GPU compiler on a target description) or ``cpu`` (this
machine's own devices: the calibration of the estimates against measured times). :func:`parse` reads one;
:meth:`Target.devices` makes its devices, none of which need be present.

The chip figures are the vendors' published per-chip peaks: dense bf16 matmul FLOP/s, HBM capacity and
HBM bandwidth (Cloud TPU system architecture pages; NVIDIA's H100/H200/A100 SXM datasheets).
"""

from __future__ import annotations

import dataclasses
import os
import re

import jax

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator's published figures: ``hbm_bytes`` (bytes), ``peak_flops`` (dense bf16 FLOP/s),
    ``hbm_bandwidth`` (bytes/s); ``chip_config`` is libtpu's name for one chip per device (TPU only)."""

    name: str
    platform: str  # "tpu" | "gpu" | "cpu"
    hbm_bytes: float
    peak_flops: float
    hbm_bandwidth: float
    chip_config: str = "default"
    description: str = ""


CHIPS: dict[str, Chip] = {
    c.name: c
    for c in (
        # Cloud TPU: https://cloud.google.com/tpu/docs/system-architecture-tpu-vm (v4, v5e, v5p, v6e pages)
        Chip("v4", "tpu", 32 * GIB, 275e12, 1228e9, "megacore", "TPU v4 (megacore: 1 device per chip)"),
        Chip("v5e", "tpu", 16 * GIB, 197e12, 819e9, "default", "TPU v5e (v5litepod)"),
        Chip("v5p", "tpu", 95 * GIB, 459e12, 2765e9, "megacore", "TPU v5p (megacore: 1 device per chip)"),
        Chip("v6e", "tpu", 32 * GIB, 918e12, 1640e9, "default", "TPU v6e (Trillium)"),
        # NVIDIA SXM datasheets: dense (not sparse) BF16 tensor-core FLOP/s
        Chip("h100", "gpu", 80e9, 989e12, 3.35e12, description="NVIDIA H100 SXM5 80 GB"),
        Chip("h200", "gpu", 141e9, 989e12, 4.8e12, description="NVIDIA H200 SXM 141 GB"),
        Chip("a100", "gpu", 80e9, 312e12, 2.039e12, description="NVIDIA A100 SXM4 80 GB"),
    )
}

_SHAPE = re.compile(r"^\d+(x\d+){1,2}$")


@dataclasses.dataclass(frozen=True)
class Target:
    """A compile target: ``chip``, and the ``shape`` of its slice (TPU: libtpu's topology, e.g. "2x4" or
    "2x2x2"; GPU: "<hosts>x<GPUs per host>"); ``text`` is the flag value it was read from."""

    text: str
    chip: Chip
    shape: str = ""

    @property
    def platform(self) -> str:
        return self.chip.platform

    @property
    def num_devices(self) -> int:
        if self.platform == "cpu":
            return jax.device_count()
        n = 1
        for d in self.shape.split("x"):
            n *= int(d)
        return n

    @property
    def compiler_options(self) -> dict:
        """XLA options every program compiled for this target takes (GPU: :data:`gpu.COMPILER_OPTIONS`)."""
        if self.platform == "gpu":
            from smartvlm_jax.aot import gpu

            return dict(gpu.COMPILER_OPTIONS)
        return {}

    def devices(self) -> list:
        """The target's devices: compile-only TPU or GPU devices (no accelerator needed), or this host's.

        Raises RuntimeError naming the extra to install when the compiler plugin is missing."""
        if self.platform == "cpu":
            return list(jax.devices())
        from jax.experimental import topologies

        if self.platform == "tpu":
            require_libtpu()
            # No TPU is claimed, so compile-only processes need not exclude each other (libtpu's lockfile
            # would refuse a second one); read when libtpu loads, on the first topology asked for.
            os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
            name = f"{self.chip.name}:{self.shape}"
            try:
                topology = topologies.get_topology_desc(
                    platform="tpu", topology_name=name, chip_config_name=self.chip.chip_config
                )
            except Exception as e:  # libtpu's own words on a shape it cannot build (XlaRuntimeError)
                words = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ValueError(
                    f"--compile_only={self.text}: libtpu refuses topology {name}: {words}"
                ) from e
        else:
            from smartvlm_jax.aot import gpu

            topology = gpu.topology(self)
        devices = list(topology.devices)
        if len(devices) != self.num_devices:
            raise ValueError(
                f"--compile_only={self.text}: the compiler's topology has {len(devices)} devices, not "
                f"{self.num_devices} (a chip per device)"
            )
        return devices


def parse(text: str) -> Target:
    """The target a ``--compile_only`` value names: "tpu:<chip>:<topology>" (chips v4, v5e, v5p, v6e;
    e.g. "tpu:v5e:16x16", "tpu:v4:2x2x2"), "gpu:<chip>:<hosts>x<gpus>" (h100, h200, a100; e.g.
    "gpu:h100:2x8") or "cpu". ValueError naming the flag and what is wrong."""
    parts = text.split(":")
    if len(parts) == 2 and parts[0] == "tpu":  # a Cloud TPU accelerator type, as launch/tpu.sh names it
        return parse(f"tpu:{accelerator_topology(parts[1], text)}")
    if parts == ["cpu"]:
        return Target(text, Chip("cpu", "cpu", 0.0, 0.0, 0.0, description="this machine's CPU devices"))
    if len(parts) != 3 or parts[0] not in ("tpu", "gpu"):
        raise ValueError(
            f"--compile_only={text!r}: expected tpu:<chip>:<topology> (e.g. tpu:v5e:2x4), "
            f"gpu:<chip>:<hosts>x<gpus> (e.g. gpu:h100:1x8) or cpu"
        )
    platform, chip, shape = parts
    known = sorted(c for c, spec in CHIPS.items() if spec.platform == platform)
    if chip not in known:
        raise ValueError(f"--compile_only={text!r}: unknown {platform} chip {chip!r}; known: {known}")
    if not _SHAPE.match(shape) or (platform == "gpu" and shape.count("x") != 1):
        want = "<hosts>x<gpus per host>, e.g. 1x8" if platform == "gpu" else "e.g. 2x4 or 2x2x2"
        raise ValueError(f"--compile_only={text!r}: bad shape {shape!r} ({want})")
    torus = next((d for c, _, d in _ACCELERATORS.values() if c == chip), None)
    if platform == "tpu" and shape.count("x") + 1 != torus:  # libtpu aborts the process (CHECK) on these
        example = "2x4 or 16x16" if torus == 2 else "2x2x2 or 2x4x4"
        raise ValueError(
            f"--compile_only={text!r}: {chip} slices are {torus}-D tori ({example}), not {shape!r}"
        )
    return Target(text, CHIPS[chip], shape)


def require_libtpu() -> None:
    """RuntimeError naming the extra to install when libtpu (the TPU compiler) is not importable."""
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise RuntimeError(
            "compiling for TPU needs libtpu: pip install -e '.[tpu-compile]' (libtpu==0.0.42.*, jax 0.10.2)"
        ) from e


def compile_only_environment() -> None:
    """Keep this process's JAX on its CPU (an installed libtpu would otherwise try to claim a TPU) and quiet
    libtpu's probe of a TPU VM's metadata. Call before JAX's first backend call."""
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_WORKER_ID", "0")
    jax.config.update("jax_platforms", "cpu")


# Cloud TPU accelerator types -> (chip, TensorCores per chip in the type's count, 2D or 3D torus)
_ACCELERATORS = {"v5litepod": ("v5e", 1, 2), "v6e": ("v6e", 1, 2), "v4": ("v4", 2, 3), "v5p": ("v5p", 2, 3)}


def accelerator_topology(accelerator: str, text: str = "") -> str:
    """ "<chip>:<topology>" of a Cloud TPU accelerator type (``v5litepod-8`` -> ``v5e:2x4``, ``v4-32`` ->
    ``v4:2x2x4``: v4 and v5p count TensorCores, two per chip). ValueError naming the flag otherwise."""
    kind, _, count = accelerator.rpartition("-")
    if kind not in _ACCELERATORS or not count.isdigit():
        raise ValueError(
            f"--compile_only={text or accelerator!r}: unknown TPU accelerator type {accelerator!r}"
        )
    chip, cores, dims = _ACCELERATORS[kind]
    chips = int(count) // cores
    if chips < 1 or chips & (chips - 1) or int(count) % cores:
        raise ValueError(f"--compile_only={text or accelerator!r}: {accelerator} is not a power-of-two slice")
    shape = [1] * dims
    i = 0
    while chips > 1:  # the smallest torus of that many chips: double the axes in turn
        shape[i % dims] *= 2
        chips //= 2
        i += 1
    shape = sorted(d for d in shape if d > 1) + [d for d in shape if d == 1]  # libtpu's: 2x2x4, 2x2x1
    return f"{chip}:{'x'.join(str(d) for d in shape)}"
