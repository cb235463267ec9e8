"""Compile-only NVIDIA GPUs: XLA's GPU compiler on a description of the GPU, with no GPU and no driver.

The ``[gpu-compile]`` extra (``jax-cuda12-pjrt`` and ``jax-cuda12-plugin`` at the jax pin, and
``nvidia-cuda-nvcc-cu12`` for ptxas and libdevice) gives JAX a CUDA topology factory. It takes a
GpuTargetConfigProto in text form (what the GPU is: compute capability, SMs, shared memory, HBM size and
bandwidth, cuDNN version) and a ``"<partitions>x<hosts>x<GPUs per host>"`` shape, and returns devices that
programs compile for (``process_index`` is the host; ids run host by host). This package ships its own
target descriptions, written from NVIDIA's published specifications in the text format of XLA's
``xla/tools/hlo_opt/gpu_specs/`` files: ``gpu_specs/<chip>.txtpb`` for h100 (SXM5 80 GB), h200 (SXM 141 GB)
and a100 (SXM4 80 GB).

What the compile-only GPU client does not do, and what this package does instead (issue 27):
  * it autotunes nothing, and its Triton GEMM tiling failed on a DINOv2 matmul without a GPU to measure:
    :data:`COMPILER_OPTIONS` turns Triton GEMMs off (cuBLAS GEMMs are chosen without autotuning);
  * ``cost_analysis()`` of its executables is None: the report runs XLA's HLO cost analysis on the CPU
    client, FLOPs from the lowered whole-mesh program divided by the devices, bytes from the compiled
    per-GPU program plus its cuBLAS/cuDNN calls' operands (``report._cost``);
  * it never refuses a program for memory (its rematerialization only warns, "Can't reduce memory use
    below ..."): the report compares the peak to the chip's HBM itself.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import re
import shutil

# Per-compile XLA options for every program compiled for a GPU target (``Lowered.compile(compiler_options)``).
COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}

_TOPOLOGY = "1x{hosts}x{gpus}"  # one partition (NVLink domain spans a host): hosts x GPUs per host


def require_plugin() -> None:
    """RuntimeError naming the extra to install when no CUDA PJRT plugin (CUDA 12: the ``[gpu-compile]``
    extra; CUDA 13: a GPU image's own) or, for CUDA 12, no ptxas (``nvidia-cuda-nvcc-cu12`` or on PATH)."""
    cuda12 = _found("jax_cuda12_plugin") and _found("jax_plugins.xla_cuda12")
    cuda13 = _found("jax_cuda13_plugin") and _found("jax_plugins.xla_cuda13")
    missing = [] if cuda12 or cuda13 else ["jax_cuda12_plugin (the CUDA PJRT plugin)"]
    if not cuda13 and not _found("nvidia.cuda_nvcc") and not shutil.which("ptxas"):
        missing.append("ptxas (nvidia-cuda-nvcc-cu12)")
    if missing:
        raise RuntimeError(
            f"compiling for GPU needs {' and '.join(missing)}: pip install -e '.[gpu-compile]' "
            "(jax-cuda12-pjrt and jax-cuda12-plugin 0.10.2, nvidia-cuda-nvcc-cu12)"
        )


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is absent
        return False


def target_config(chip: str) -> str:
    """The shipped GpuTargetConfigProto text of ``chip`` ("h100", "h200", "a100"). ValueError naming the
    chip when there is none."""
    path = importlib.resources.files("smartvlm_jax.aot") / "gpu_specs" / f"{chip}.txtpb"
    if not path.is_file():
        raise ValueError(f"no GPU target description for {chip!r} (smartvlm_jax/aot/gpu_specs/)")
    return path.read_text(encoding="utf-8")


def spec_value(text: str, field: str) -> float:
    """A numeric field of a GpuTargetConfigProto text (e.g. "device_memory_size"). KeyError if absent."""
    found = re.search(rf"^\s*{field}:\s*([\d.eE+]+)\s*$", text, re.MULTILINE)
    if not found:
        raise KeyError(f"{field} not in the GPU target description")
    return float(found.group(1))


def topology(target):
    """Compile-only devices of ``target`` (a ``gpu:<chip>:<hosts>x<gpus>`` targets.Target): hosts x GPUs
    per host devices of the chip's shipped description. RuntimeError naming the extra when it is missing."""
    require_plugin()
    from jax.experimental import topologies

    hosts, gpus = target.shape.split("x")
    return topologies.get_topology_desc(
        platform="cuda",
        target_config=target_config(target.chip.name),
        topology=_TOPOLOGY.format(hosts=hosts, gpus=gpus),
    )


def cudnn_attention_error(devices, q_shape=(1, 256, 12, 64), dtype: str = "bfloat16") -> str:
    """Empty if cuDNN's fused attention (``jax.nn.dot_product_attention(implementation="cudnn")``, what a
    bf16 GPU run asks for) traces and compiles for the compile-only GPU ``devices``, else the error, one
    line ("<type>: <message>"). Without the cuDNN library (not part of ``[gpu-compile]``) JAX refuses at
    trace time ("cuDNN not found.")."""
    import jax

    sharding = jax.sharding.SingleDeviceSharding(devices[0])
    q = jax.ShapeDtypeStruct(q_shape, dtype, sharding=sharding)
    fn = functools.partial(jax.nn.dot_product_attention, scale=1.0, implementation="cudnn")
    try:
        jax.jit(fn).lower(q, q, q).compile(dict(COMPILER_OPTIONS))
    except Exception as e:  # any refusal: the report says so and uses XLA's attention
        lines = str(e).strip().splitlines()
        return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"
    return ""
