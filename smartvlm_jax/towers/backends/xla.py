"""The towers' encoder ops on XLA's own dots, with the attention formulation and batching of the platform.

CPU ("cpu"): attention heads-major (:func:`attend_heads_major`), the batch in groups of about
:data:`CPU_GROUP_ROWS` token rows (:func:`group_size`), float32 forwards compiled with XLA's oneDNN dots
(:func:`compiler_options`). GPU/TPU ("fused"): :func:`fused_attention` (cuDNN's flash attention on NVIDIA
GPUs in bf16/fp16), the whole batch at once. Both compute what :mod:`smartvlm_jax.towers.vit` states.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from smartvlm_jax.towers import vit

F32 = jnp.float32

# Attention formulations, picked at trace time from the backend (see :func:`default_impl`):
# "cpu": :func:`attend_heads_major`; "fused": :func:`fused_attention` (cuDNN flash attention on NVIDIA
# GPUs in bf16/fp16, XLA's ``dot_product_attention`` otherwise); "cudnn": cuDNN's flash attention asked
# for outright, unprobed (a program compiled for a GPU that is not this process's backend: impl_for);
# "flash": the Pallas TPU flash-attention kernel (:mod:`.tpu_flash`; ``towers.attention="flash"``).
ATTENTION_IMPLS = ("cpu", "fused", "cudnn", "flash")
# config.towers.attention: "xla" (the platform's formulation, above) or "flash" (TPU only).
TOWER_ATTENTION = ("xla", "flash")
# jax.nn.dot_product_attention's own default is XLA's formulation on every backend: cuDNN must be asked for.
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


def default_impl() -> str:
    """The attention formulation for the default backend: "fused" on GPU/TPU, "cpu" otherwise."""
    return "fused" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "cpu"


def impl_for(platform: str, dtype: Any, attention: str = "xla") -> str:
    """The attention formulation of a program compiled for ``platform`` ("cpu", "tpu", "gpu"/"cuda") in
    compute ``dtype``, whatever this process's default backend: with ``attention`` "xla" (the default),
    "cpu" on CPU, "cudnn" on NVIDIA GPUs in bf16/fp16 (what a GPU run asks for), "fused" (XLA's
    formulation) otherwise; with "flash", the Pallas kernel, TPU only. ValueError naming
    ``--config.towers.attention`` for another value or platform."""
    if attention not in TOWER_ATTENTION:
        raise ValueError(f"--config.towers.attention={attention!r} is not one of {TOWER_ATTENTION}")
    if attention == "flash":
        if platform != "tpu":
            raise ValueError(
                f"--config.towers.attention='flash' is a TPU kernel (Pallas/Mosaic); this program is for "
                f"{platform}: use 'xla'"
            )
        return "flash"
    if platform == "cpu":
        return "cpu"
    if platform in ("gpu", "cuda") and jnp.dtype(dtype) in CUDNN_DTYPES:
        return "cudnn"
    return "fused"


def attend_heads_major(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """:func:`vit.attend` on ``[B, H, T, Dh]`` operands (scaled, in the compute dtype) -> ``[B, H, Tq, Dh]``.

    The CPU path: with the heads axis leading, both dots are plain batched matmuls that XLA hands to its
    matmul library without a transpose of the [Tq, Tk] scores; scores, exp and the row sums stay float32.
    """
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=F32)
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True)).astype(v.dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", e, v, preferred_element_type=F32)
    row_sums = jnp.einsum("bhqk,k->bhq", e, jnp.ones(e.shape[-1:], e.dtype), preferred_element_type=F32)
    return out / row_sums[..., None]


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Scaled (already) attention of ``[B, T, H, Dh]`` q/k/v -> ``[B, T, H, Dh]`` in q's dtype.

    On a CUDA GPU with bf16/fp16 operands: ``jax.nn.dot_product_attention(implementation="cudnn")``, cuDNN's
    fused flash attention, where :func:`cudnn_attention_compiles` for these shapes; otherwise (another GPU
    vendor, an old cuDNN or compute capability, a head size cuDNN refuses: a warning says why; float32;
    other backends) XLA's formulation of the same function.
    """
    if jax.default_backend() == "gpu" and q.dtype in CUDNN_DTYPES:
        reason = cudnn_attention_compiles(tuple(q.shape), tuple(k.shape), jnp.dtype(q.dtype).name)
        if not reason:
            return jax.nn.dot_product_attention(q, k, v, scale=1.0, implementation="cudnn")
        warnings.warn(
            f"cuDNN attention unavailable for {q.shape} {q.dtype} ({reason}); using XLA's", stacklevel=2
        )
    return jax.nn.dot_product_attention(q, k, v, scale=1.0)


@functools.lru_cache(maxsize=64)
def cudnn_attention_compiles(q_shape: tuple, kv_shape: tuple, dtype: str) -> str:
    """Empty if cuDNN's fused attention traces and compiles for these shapes on the default GPU, else why not.

    Probed once per shape with a stand-alone compilation: cuDNN refuses some configurations only when XLA
    builds its graph, which a surrounding jit could not recover from.
    """
    q = jax.ShapeDtypeStruct(q_shape, dtype)
    kv = jax.ShapeDtypeStruct(kv_shape, dtype)
    fn = functools.partial(jax.nn.dot_product_attention, scale=1.0, implementation="cudnn")
    try:
        jax.jit(fn).lower(q, kv, kv).compile()
    except Exception as e:  # any refusal means: use XLA's formulation
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return ""


# XLA options for compiling a float32 ViT forward on CPU: every dot through oneDNN and no YNNPACK
# fusions. YNNPACK (the default) fuses the attention's max/exp into the score dot and runs float32
# GEMMs no faster than oneDNN, so this set is faster on the base towers in float32. For bfloat16 the
# defaults stay: there YNNPACK's dots are several times faster than XLA's oneDNN ones (the figures of both:
# docs/performance.md, figures behind the code's choices).
CPU_FP32_COMPILER_OPTIONS: dict[str, Any] = {
    "xla_cpu_experimental_ynn_fusion_type": "",
    "xla_cpu_use_onednn": True,
    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT",
}


def compiler_options(dtype: Any) -> dict[str, Any] | None:
    """``jax.jit(..., compiler_options=)`` for a tower forward in ``dtype`` on the default backend.

    CPU float32: :data:`CPU_FP32_COMPILER_OPTIONS`; anything else: ``None`` (XLA's defaults).
    """
    if default_impl() == "cpu" and jnp.dtype(dtype) == jnp.float32:
        return dict(CPU_FP32_COMPILER_OPTIONS)
    return None


# On CPU a tower runs over groups of about this many token rows at a time (see :func:`group_size`).
CPU_GROUP_ROWS = 1100


def group_size(batch: int, tokens: int, rows: int | None = None) -> int:
    """How many examples a CPU forward runs at once: the largest divisor of ``batch`` whose rows fit
    ``rows`` (default :data:`CPU_GROUP_ROWS`; at least one example).

    On CPU a whole batch of activations (8 images x 257 tokens x 3072 MLP units is 25 MB in float32) falls
    out of the caches between the matmuls of a block; ~1k rows at a time keeps them in L2/L3 and was
    measurably faster.
    """
    rows = CPU_GROUP_ROWS if rows is None else rows
    fits = [g for g in range(1, batch + 1) if batch % g == 0 and g * tokens <= max(rows, tokens)]
    return max(fits)


def map_groups(fn: Callable[[jax.Array], jax.Array], x: jax.Array, group: int) -> jax.Array:
    """``fn`` over ``x`` in consecutive groups of ``group`` examples (``lax.map``), results concatenated.

    ``fn`` must treat examples independently (the towers do), so the result equals ``fn(x)``; ``ValueError``
    if ``group`` does not divide the batch.
    """
    b = x.shape[0]
    if group >= b:
        return fn(x)
    if b % group:
        raise ValueError(f"group {group} does not divide the batch {b}")
    y = lax.map(fn, x.reshape(b // group, group, *x.shape[1:]))
    return y.reshape(b, *y.shape[2:])


@dataclasses.dataclass(frozen=True)
class XlaOps:
    """:class:`vit.Ops` on XLA's dots, with attention formulation ``impl`` (one of :data:`ATTENTION_IMPLS`;
    ``ValueError`` otherwise). Takes blocks with HF-named or fused (:func:`vit.fuse_qkv`) weights."""

    impl: str = "cpu"

    def __post_init__(self) -> None:
        if self.impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {self.impl!r}")

    def linear(self, p: vit.Params, x: jax.Array) -> jax.Array:
        return vit.linear(p, x)

    def attention(self, qkv: vit.Params, x: jax.Array, num_heads: int, dtype: Any) -> jax.Array:
        """The projection in float32, the query scale 1/sqrt(Dh) applied to q before it is cast to
        ``dtype`` for the QK^T dot (as PyTorch's scaled_dot_product_attention does), then "cpu":
        heads-major einsums; "fused": :func:`fused_attention`; "flash": :func:`tpu_flash.flash_attention`.
        Returns float32 [B, T, D]."""
        b, t, d = x.shape
        head_dim = d // num_heads
        y = vit.linear(qkv, x)
        scale = jnp.concatenate([jnp.full((d,), head_dim**-0.5, F32), jnp.ones((2 * d,), F32)])
        y = (y * scale).astype(dtype).reshape(b, t, 3, num_heads, head_dim)
        if self.impl == "cudnn":
            ctx = jax.nn.dot_product_attention(
                y[:, :, 0], y[:, :, 1], y[:, :, 2], scale=1.0, implementation="cudnn"
            )
            return ctx.astype(F32).reshape(b, t, d)
        if self.impl == "flash":
            from smartvlm_jax.towers.backends import tpu_flash

            return tpu_flash.flash_attention(y[:, :, 0], y[:, :, 1], y[:, :, 2]).astype(F32).reshape(b, t, d)
        if self.impl == "fused":
            return fused_attention(y[:, :, 0], y[:, :, 1], y[:, :, 2]).astype(F32).reshape(b, t, d)
        y = jnp.transpose(y, (2, 0, 3, 1, 4))  # [3, B, H, T, Dh]
        ctx = attend_heads_major(y[0], y[1], y[2])
        return jnp.transpose(ctx, (0, 2, 1, 3)).reshape(b, t, d)

    def block(self, p: vit.Params, x: jax.Array, layout: vit.BlockLayout, **kwargs: Any) -> jax.Array:
        return vit.encoder_block(p, x, layout, ops=self, **kwargs)

    def in_groups(self, fn: Callable[[jax.Array], jax.Array], x: jax.Array, tokens: int) -> jax.Array:
        """On CPU in groups of :func:`group_size` examples; on GPU/TPU the whole batch at once."""
        group = group_size(x.shape[0], tokens) if self.impl == "cpu" else x.shape[0]
        return map_groups(fn, x, group)
