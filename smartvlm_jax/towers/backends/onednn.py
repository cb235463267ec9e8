"""The towers' encoder ops on one-device CPU: oneDNN kernels, called from jitted code as XLA FFI custom calls.

On CPU, XLA's own GEMMs and attention are where the towers lost to PyTorch, which runs oneDNN. The ViT
blocks therefore run through ``onednn_kernels.cc``: linear layers with weights packed once into oneDNN's
blocked layout (:func:`pack`, :func:`pack_linears`), bias and GELU fused into the matmul (:func:`linear`);
self-attention read straight from the fused q/k/v projection, per image batched matmuls and a softmax
(:func:`attention`); and a whole encoder block in one call (:func:`encoder_block`). :class:`OnednnOps` runs
:mod:`smartvlm_jax.towers.vit`'s encoders on them; :func:`usable` says whether this process can.

The C++ source is compiled on first use with the system C++ compiler against jaxlib's FFI headers and
the ``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp`` wheels (requirements.txt), and cached under
``$SMARTVLM_JAX_CACHE`` (default ``~/.cache/smartvlm_jax``). Where any of that is missing,
:func:`unavailable_reason` says what, and the towers keep XLA's dots.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from smartvlm_jax import fileio
from smartvlm_jax.towers import vit
from smartvlm_jax.towers.backends import xla
from smartvlm_jax.towers.params import flatten, unflatten

log = logging.getLogger(__name__)

SOURCE = pathlib.Path(__file__).with_name("onednn_kernels.cc")
LINEAR = "smartvlm_onednn_linear"
ATTENTION = "smartvlm_onednn_attention"
BLOCK = "smartvlm_onednn_encoder_block"
# Activations the GEMM can apply as a post-op; the numbering is the C++ enum's.
ACTIVATIONS = {None: 0, "gelu_erf": 1, "gelu_tanh": 2}
_DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(ml_dtypes.bfloat16): 1}


class UnavailableError(RuntimeError):
    """The oneDNN kernels cannot be built or loaded here; the message says why."""


def _prefixes() -> list[pathlib.Path]:
    # pip puts a wheel's data/ files under the environment prefix (a venv) or the user base (--user)
    seen = []
    for p in (sys.prefix, sys.base_prefix, sysconfig.get_config_var("userbase") or ""):
        if p and pathlib.Path(p) not in seen:
            seen.append(pathlib.Path(p))
    return seen


def _find_onednn() -> tuple[pathlib.Path, pathlib.Path]:
    """(include dir, lib dir) of the installed oneDNN wheels."""
    for prefix in _prefixes():
        include, lib = prefix / "include", prefix / "lib"
        if (include / "oneapi" / "dnnl" / "dnnl.hpp").is_file() and (lib / "libdnnl.so.3").is_file():
            return include, lib
    raise UnavailableError(
        "oneDNN not found (looked for include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so.3 under "
        f"{', '.join(map(str, _prefixes()))}); install onednn-cpu-gomp and onednn-devel-cpu-gomp"
    )


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("SMARTVLM_JAX_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "smartvlm_jax"
    )
    return pathlib.Path(root) / "onednn"


def _build(include: pathlib.Path, lib: pathlib.Path) -> pathlib.Path:
    """Compiles ``onednn_kernels.cc`` once per source / jaxlib / oneDNN combination; returns the .so."""
    wanted = os.environ.get("CXX")
    compiler = shutil.which(wanted) if wanted else shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise UnavailableError(
            f"C++ compiler $CXX={wanted!r} not found" if wanted else "no C++ compiler (g++ / c++) on PATH"
        )
    source = SOURCE.read_bytes()
    key = hashlib.sha256(
        source + jax.ffi.include_dir().encode() + str(lib).encode() + jax.__version__.encode()
    )
    out = _cache_dir() / f"libsmartvlm_onednn_{key.hexdigest()[:16]}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with fileio.atomic_path(out) as built:  # concurrent builders each install a whole library
        cmd = [compiler, "-O2", "-std=c++17", "-fopenmp", "-shared", "-fPIC", "-o", str(built), str(SOURCE)]
        cmd += ["-isystem", jax.ffi.include_dir(), "-isystem", str(include)]
        cmd += [f"-L{lib}", "-l:libdnnl.so.3", f"-Wl,-rpath,{lib}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise UnavailableError(f"building {SOURCE.name} failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    log.info("built the oneDNN tower kernels: %s", out)
    return out


@functools.cache
def _library() -> ctypes.CDLL:
    """The built kernel library, loaded and registered with XLA (once per process)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise UnavailableError(
            f"the oneDNN kernels are built for x86-64 Linux, not {platform.system()} {platform.machine()}"
        )
    lib = ctypes.CDLL(str(_build(*_find_onednn())))
    lib.smartvlm_dnnl_packed_bytes.restype = ctypes.c_int64
    lib.smartvlm_dnnl_packed_bytes.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.smartvlm_dnnl_pack.restype = ctypes.c_int
    lib.smartvlm_dnnl_pack.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    jax.ffi.register_ffi_target(LINEAR, jax.ffi.pycapsule(lib.SmartvlmDnnlLinear), platform="cpu")
    jax.ffi.register_ffi_target(ATTENTION, jax.ffi.pycapsule(lib.SmartvlmDnnlAttention), platform="cpu")
    jax.ffi.register_ffi_target(BLOCK, jax.ffi.pycapsule(lib.SmartvlmDnnlEncoderBlock), platform="cpu")
    return lib


@functools.cache
def unavailable_reason() -> str | None:
    """None when the kernels are built and registered, else why not (logged once as a warning)."""
    try:
        _library()
    except (UnavailableError, OSError) as e:
        log.warning("oneDNN tower kernels unavailable, using XLA's dots: %s", e)
        return str(e)
    return None


def pack(kernel: Any) -> jax.Array:
    """A ``[K, N]`` float32 / bfloat16 kernel in oneDNN's packed layout (flat, same dtype) for :func:`linear`.

    Runs on the host, outside jit; the result is only meaningful to :func:`linear`.
    """
    w = np.ascontiguousarray(np.asarray(kernel))
    if w.ndim != 2 or w.dtype not in _DTYPE_CODES:
        raise ValueError(f"pack takes a [K, N] float32 or bfloat16 kernel, got {w.dtype} {w.shape}")
    lib, code = _library(), _DTYPE_CODES[w.dtype]
    size = lib.smartvlm_dnnl_packed_bytes(w.shape[0], w.shape[1], code)
    if size < 0 or size % w.itemsize:
        raise UnavailableError(f"oneDNN has no packed layout for a {w.dtype} {w.shape} kernel")
    packed = np.empty(size // w.itemsize, w.dtype)
    if lib.smartvlm_dnnl_pack(w.ctypes.data, w.shape[0], w.shape[1], code, packed.ctypes.data):
        raise UnavailableError(f"oneDNN failed to pack a {w.dtype} {w.shape} kernel")
    return jax.device_put(packed)  # jnp.asarray would compile a copy program per shape


def linear(
    x: jax.Array, packed: jax.Array, bias: jax.Array, act: str | None = None, out_dtype: Any = jnp.float32
) -> jax.Array:
    """``act(x @ W + bias)`` over the last axis of ``x``, ``W`` packed by :func:`pack`; fp32 accumulation.

    ``x`` is cast to the kernel's dtype; ``bias`` is float32 ``[N]``; ``act`` one of :data:`ACTIVATIONS`;
    the result is ``out_dtype`` (float32, or the kernel's dtype) ``[..., N]``.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {sorted(map(str, ACTIVATIONS))}, got {act!r}")
    if jnp.dtype(out_dtype) not in (jnp.dtype(jnp.float32), packed.dtype):
        raise ValueError(
            f"out_dtype must be float32 or the kernel's {packed.dtype}, got {jnp.dtype(out_dtype)}"
        )
    _library()
    out = jax.ShapeDtypeStruct((*x.shape[:-1], bias.shape[-1]), out_dtype)
    call = jax.ffi.ffi_call(LINEAR, out)
    return call(x.astype(packed.dtype), packed, bias.astype(jnp.float32), act=np.int64(ACTIVATIONS[act]))


def attention(qkv: jax.Array, num_heads: int, scale: float) -> jax.Array:
    """Softmax self-attention from a fused projection ``qkv`` [B, T, 3 * D] (q | k | v, heads inside each)
    -> ``[B, T, D]`` in ``qkv``'s dtype (float32 or bfloat16).

    Scores are ``scale * q k^T`` in float32; the softmax is rounded to the dtype before the PV product.
    """
    _library()
    b, t, width = qkv.shape
    if width % (3 * num_heads):
        raise ValueError(f"qkv width {width} is not 3 x {num_heads} heads x head_dim")
    out = jax.ShapeDtypeStruct((b, t, width // 3), qkv.dtype)
    return jax.ffi.ffi_call(ATTENTION, out)(qkv, heads=np.int64(num_heads), scale=np.float32(scale))


def encoder_block(
    x: jax.Array,
    p: dict[str, Any],
    num_heads: int,
    eps: float,
    act: str,
) -> jax.Array:
    """One pre-LN transformer block on the float32 residual stream ``x`` [B, T, D], in one call:
    ``h = x + ls1 * out(attention(qkv(ln1(x))))``, ``y = h + ls2 * fc2(act(fc1(ln2(h))))``.

    ``p`` holds ``ln1`` / ``ln2`` (``scale``, ``bias``), ``qkv``, ``out``, ``fc1``, ``fc2`` (``packed``,
    ``bias``) and, where the block has layer scales, ``ls1`` / ``ls2`` [D] (absent: ones). Matmul inputs
    are in the kernels' dtype; LayerNorm, residuals and scales in float32, as in
    :func:`smartvlm_jax.towers.vit.encoder_block`.
    """
    _library()
    d = x.shape[-1]
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    ones = jnp.ones((d,), jnp.float32)
    norm = lambda name: (f32(p[name]["scale"]), f32(p[name]["bias"]))
    dense = lambda name: (p[name]["packed"], f32(p[name]["bias"]))  # packed kernels keep their dtype
    attention_half = [*norm("ln1"), *dense("qkv"), *dense("out"), f32(p.get("ls1", ones))]
    mlp_half = [*norm("ln2"), *dense("fc1"), *dense("fc2"), f32(p.get("ls2", ones))]
    args = [f32(x), *attention_half, *mlp_half]  # the order of the kernel's operands
    call = jax.ffi.ffi_call(BLOCK, jax.ShapeDtypeStruct(x.shape, jnp.float32))
    return call(
        *args,
        heads=np.int64(num_heads),
        eps=np.float32(eps),
        act=np.int64(ACTIVATIONS[act]),
        scale=np.float32((d // num_heads) ** -0.5),
    )


# The ViT encoders on the kernels: whether this process uses them, the weights' layout, the ops.


def usable() -> bool:
    """Whether this process runs packed towers through the kernels: a one-device CPU backend where they
    build (:func:`unavailable_reason`). A custom call has no SPMD partitioning rule: over several devices
    it would run replicated."""
    return xla.default_impl() == "cpu" and jax.device_count() == 1 and unavailable_reason() is None


def pack_linears(layers: vit.Params, layout: vit.BlockLayout) -> dict[str, Any]:
    """``layers`` (after :func:`vit.fuse_qkv`) with each block's linears as packed kernels (``{"packed",
    "bias"}``: :func:`pack`, float32 bias, zeros where the block has none); run once, outside jit."""
    paths = (vit.FUSED_QKV, layout.out, layout.fc1, layout.fc2)
    packed = {}
    for name, block in layers.items():
        flat = flatten(block)
        for path in paths:
            kernel = flat.pop(f"{path}.kernel")
            bias = flat.pop(f"{path}.bias", None)
            flat[f"{path}.packed"] = pack(kernel)
            bias = jnp.zeros(kernel.shape[1:]) if bias is None else bias
            flat[f"{path}.bias"] = bias.astype(jnp.float32)
        packed[name] = unflatten(flat)
    return packed


def is_packed(layers: vit.Params) -> bool:
    """Whether encoder ``layers`` were laid out by :func:`pack_linears`."""
    first = next(iter(layers.values()), {})
    return "packed" in first.get(vit.FUSED_QKV, {})


# The activations :func:`encoder_block` applies inside its MLP's first matmul, by their names there.
ACTIVATION_NAMES: dict[Callable[[jax.Array], jax.Array], str] = {
    vit.gelu_erf: "gelu_erf",
    vit.gelu_tanh: "gelu_tanh",
}
# Token rows a forward runs at once (:func:`xla.group_size`): larger than XLA's groups, as the packed
# GEMMs keep AMX busier on more rows (+15 %, bf16 DINOv2-base); attention runs image by image either way.
GROUP_ROWS = 2100


class OnednnOps:
    """:class:`vit.Ops` on blocks prepared by :func:`pack_linears`: each block one :func:`encoder_block`
    call, except SwiGLU ones and activations the kernel lacks, whose linears and attention still run
    here one by one."""

    def linear(self, p: vit.Params, x: jax.Array) -> jax.Array:
        return linear(x, p["packed"], p["bias"])

    def attention(self, qkv: vit.Params, x: jax.Array, num_heads: int, dtype: Any) -> jax.Array:
        """The projection in ``dtype`` (:func:`linear`), then :func:`attention`; returns ``dtype``."""
        y = linear(x, qkv["packed"], qkv["bias"], out_dtype=dtype)
        return attention(y, num_heads, (x.shape[-1] // num_heads) ** -0.5)

    def block(
        self,
        p: vit.Params,
        x: jax.Array,
        layout: vit.BlockLayout,
        *,
        num_heads: int,
        eps: float,
        act: Callable[[jax.Array], jax.Array],
        dtype: Any,
    ) -> jax.Array:
        if layout.swiglu or act not in ACTIVATION_NAMES:
            return vit.encoder_block(
                p, x, layout, num_heads=num_heads, eps=eps, act=act, dtype=dtype, ops=self
            )
        weights = {
            "ln1": vit.get(p, layout.norm1),
            "qkv": p[vit.FUSED_QKV],
            "out": vit.get(p, layout.out),
            "ln2": vit.get(p, layout.norm2),
            "fc1": vit.get(p, layout.fc1),
            "fc2": vit.get(p, layout.fc2),
        }
        for key, path in (("ls1", layout.layer_scale1), ("ls2", layout.layer_scale2)):
            if path:
                weights[key] = vit.get(p, path)
        return encoder_block(x, weights, num_heads, eps, ACTIVATION_NAMES[act])

    def in_groups(self, fn: Callable[[jax.Array], jax.Array], x: jax.Array, tokens: int) -> jax.Array:
        return xla.map_groups(fn, x, xla.group_size(x.shape[0], tokens, GROUP_ROWS))
