"""Shared pre-LayerNorm ViT pieces for the frozen towers, as pure functions over parameter dicts.

The towers are frozen, so they are written as plain functions of a nested parameter dict whose keys
mirror the Hugging Face checkpoint (``encoder.layer.0.attention.attention.query.kernel``); that keeps the
converter a rename table and lets the trainer treat tower weights as data. Every matmul takes its input
in the weights' dtype and accumulates in float32 (``preferred_element_type``), and LayerNorm, softmax and
the residual stream stay float32: with bfloat16 weights that is the fast path of XLA's CPU backend and the
usual mixed-precision recipe on TPU/GPU; with float32 weights it is plain fp32.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from smartvlm_jax.activations import gelu_erf
from smartvlm_jax.towers import onednn
from smartvlm_jax.towers.params import flatten, unflatten

Params = Mapping[str, Any]
F32 = jnp.float32


def get(params: Params, path: str) -> Any:
    """Returns the sub-tree at a dotted ``path`` (``"attention.output.dense"``)."""
    node = params
    for part in path.split("."):
        node = node[part]
    return node


def gelu_tanh(x: jax.Array) -> jax.Array:
    """The tanh approximation of GELU (HF ``gelu_pytorch_tanh`` / ``gelu_new``)."""
    return jax.nn.gelu(x, approximate=True)


# HF ``hidden_act`` names -> functions; a config naming anything else fails loudly at load time.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu_erf,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_new": gelu_tanh,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
}


# The activations the oneDNN encoder block applies inside its MLP's first matmul, by their names there.
ONEDNN_ACTIVATIONS: dict[Callable[[jax.Array], jax.Array], str] = {
    gelu_erf: "gelu_erf",
    gelu_tanh: "gelu_tanh",
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Looks up an HF activation name; raises ``ValueError`` naming it when unsupported."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def linear(p: Params, x: jax.Array) -> jax.Array:
    """``x @ kernel + bias`` with inputs in the kernel's dtype and a float32 result.

    ``p`` holds ``kernel`` (and maybe ``bias``), or ``packed`` and ``bias`` from :func:`pack_linears`.
    """
    if "packed" in p:
        return onednn.linear(x, p["packed"], p["bias"])
    kernel = p["kernel"]
    y = jnp.dot(x.astype(kernel.dtype), kernel, preferred_element_type=F32)
    if "bias" in p:
        y = y + p["bias"].astype(F32)
    return y


def layer_norm(p: Params, x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis, computed in float32 (biased variance, like PyTorch)."""
    x = x.astype(F32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    y = centred * lax.rsqrt(var + eps)
    return y * p["scale"].astype(F32) + p["bias"].astype(F32)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, dtype: Any) -> jax.Array:
    """Softmax attention of ``[B, Tq, H, Dh]`` queries (already scaled) over ``[B, Tk, H, Dh]`` keys/values.

    Normalises after the PV product (exp(s - max) -> PV -> divide by the row sums), which is the same
    softmax but one [Tq, Tk] pass cheaper, and faster on CPU.
    """
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(dtype), k.astype(dtype), preferred_element_type=F32)
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    out = jnp.einsum("bhqk,bkhd->bqhd", e.astype(dtype), v.astype(dtype), preferred_element_type=F32)
    denom = jnp.sum(e, axis=-1)  # [B, H, Tq]
    return out / jnp.transpose(denom, (0, 2, 1))[..., None]


def attend_heads_major(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """:func:`attend` on ``[B, H, T, Dh]`` operands (scaled, in the compute dtype) -> ``[B, H, Tq, Dh]``.

    The CPU path: with the heads axis leading, both dots are plain batched matmuls that XLA hands to its
    matmul library without a transpose of the [Tq, Tk] scores; scores, exp and the row sums stay float32.
    """
    s = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=F32)
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True)).astype(v.dtype)
    out = jnp.einsum("bhqk,bhkd->bhqd", e, v, preferred_element_type=F32)
    row_sums = jnp.einsum("bhqk,k->bhq", e, jnp.ones(e.shape[-1:], e.dtype), preferred_element_type=F32)
    return out / row_sums[..., None]


# Attention formulations, picked at trace time from the backend (see :func:`default_impl`):
# "cpu": :func:`attend_heads_major`; "fused": :func:`fused_attention` (cuDNN flash attention on NVIDIA
# GPUs in bf16/fp16, XLA's ``dot_product_attention`` otherwise).
ATTENTION_IMPLS = ("cpu", "fused")
# jax.nn.dot_product_attention's own default is XLA's formulation on every backend: cuDNN must be asked for.
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)


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
    except Exception as e:  # noqa: BLE001 - any refusal means: use XLA's formulation
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return ""


def default_impl() -> str:
    """The attention formulation for the default backend: "fused" on GPU/TPU, "cpu" otherwise."""
    return "fused" if jax.default_backend() in ("gpu", "cuda", "rocm", "tpu") else "cpu"


# XLA options for compiling a float32 ViT forward on CPU: every dot through oneDNN and no YNNPACK
# fusions. YNNPACK (the default) fuses the attention's max/exp into the score dot and runs float32
# GEMMs no faster than oneDNN; this set measured +5-15 % on the base towers in float32 (Intel Xeon, AMX).
# For bfloat16 the defaults stay: XLA's oneDNN bf16 dots ran at ~300 GFLOP/s against YNNPACK's ~1,500.
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


@dataclasses.dataclass(frozen=True)
class BlockLayout:
    """Where one pre-LN encoder block keeps its weights, as dotted paths relative to the block.

    DINOv2 and SigLIP share the computation and differ in names (and DINOv2's layer scale / SwiGLU);
    each tower module fills one of these in.
    """

    norm1: str
    query: str
    key: str
    value: str
    out: str
    norm2: str
    fc1: str
    fc2: str
    layer_scale1: str | None = None
    layer_scale2: str | None = None
    swiglu: bool = False


# Where :func:`fuse_qkv` puts a block's fused projection (a name no HF checkpoint uses).
FUSED_QKV = "fused_qkv"


def _qkv_projection(p: Params, layout: BlockLayout, width: int) -> tuple[jax.Array, jax.Array]:
    """The q, k and v kernels side by side ``[D, 3D]`` and their biases ``[3D]`` (zeros where absent).

    One [D, 3D] matmul instead of three [D, D] ones: a wider output keeps the matmul library busier. Blocks
    prepared by :func:`fuse_qkv` carry it ready-made; otherwise it is concatenated here, under jit, which
    on CPU costs 5-13 % of a base tower's forward (XLA's CPU concatenation is slow, and upcasts bfloat16).
    """
    if FUSED_QKV in p:
        return p[FUSED_QKV]["kernel"], p[FUSED_QKV]["bias"]
    parts = [get(p, path) for path in (layout.query, layout.key, layout.value)]
    kernel = jnp.concatenate([part["kernel"] for part in parts], axis=1)
    bias = jnp.concatenate(
        [part["bias"].astype(F32) if "bias" in part else jnp.zeros((width,), F32) for part in parts]
    )
    return kernel, bias


def fuse_qkv(layers: Params, layout: BlockLayout, width: int) -> dict[str, Any]:
    """``layers`` (``{"0": block, ...}``) with each block's q, k, v projections replaced by one fused one.

    Run once, outside jit, on frozen weights: the forward then finds ``block[FUSED_QKV]`` and skips the
    per-call concatenation. Leaves other than q/k/v are shared, not copied. The result is for running the
    tower (``Tower.ready_params``), not for saving: checkpoints keep the HF names.
    """
    separate = tuple(f"{path}." for path in (layout.query, layout.key, layout.value))
    fused = {}
    for name, block in layers.items():
        kernel, bias = jax.jit(_qkv_projection, static_argnums=(1, 2))(block, layout, width)
        rest = {key: leaf for key, leaf in flatten(block).items() if not key.startswith(separate)}
        fused[name] = {**unflatten(rest), FUSED_QKV: {"kernel": kernel, "bias": bias}}
    return fused


def pack_linears(layers: Params, layout: BlockLayout) -> dict[str, Any]:
    """``layers`` (after :func:`fuse_qkv`) with each block's linears as oneDNN-packed kernels
    (``{"packed", "bias"}``, :func:`onednn.pack`); for CPU forwards, run once outside jit."""
    paths = (FUSED_QKV, layout.out, layout.fc1, layout.fc2)
    packed = {}
    for name, block in layers.items():
        flat = flatten(block)
        for path in paths:
            kernel = flat.pop(f"{path}.kernel")
            bias = flat.pop(f"{path}.bias", None)
            flat[f"{path}.packed"] = onednn.pack(kernel)
            flat[f"{path}.bias"] = jnp.zeros(kernel.shape[1:], F32) if bias is None else bias.astype(F32)
        packed[name] = unflatten(flat)
    return packed


def prepare_layers(layers: Params, layout: BlockLayout, width: int, pack: bool) -> dict[str, Any]:
    """``layers`` laid out for the forward, once, outside jit: q/k/v fused (:func:`fuse_qkv`) and, with
    ``pack``, the linears packed for the oneDNN kernels (:func:`pack_linears`)."""
    layers = fuse_qkv(layers, layout, width)
    return pack_linears(layers, layout) if pack else layers


def self_attention(
    p: Params, x: jax.Array, layout: BlockLayout, num_heads: int, dtype: Any, impl: str = "cpu"
) -> jax.Array:
    """Multi-head self-attention of ``x`` [B, T, D]: fused q/k/v projection, attention, output projection.

    The query scale 1/sqrt(Dh) is applied to q in float32 before it is cast for the QK^T dot, as
    PyTorch's scaled_dot_product_attention does. ``impl`` is one of :data:`ATTENTION_IMPLS`.
    """
    b, t, d = x.shape
    head_dim = d // num_heads
    if "packed" in p.get(FUSED_QKV, {}):  # the oneDNN path (:func:`pack_linears`, CPU only)
        qkv = onednn.linear(x, p[FUSED_QKV]["packed"], p[FUSED_QKV]["bias"], out_dtype=dtype)
        return linear(get(p, layout.out), onednn.attention(qkv, num_heads, head_dim**-0.5))
    if FUSED_QKV in p:
        qkv = linear(p[FUSED_QKV], x)
    else:
        kernel, bias = _qkv_projection(p, layout, d)
        qkv = jnp.dot(x.astype(kernel.dtype), kernel, preferred_element_type=F32) + bias
    scale = jnp.concatenate([jnp.full((d,), head_dim**-0.5, F32), jnp.ones((2 * d,), F32)])
    qkv = (qkv * scale).astype(dtype).reshape(b, t, 3, num_heads, head_dim)
    if impl == "fused":
        ctx = fused_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]).astype(F32).reshape(b, t, d)
    elif impl == "cpu":
        qkv = jnp.transpose(qkv, (2, 0, 3, 1, 4))  # [3, B, H, T, Dh]
        ctx = attend_heads_major(qkv[0], qkv[1], qkv[2])
        ctx = jnp.transpose(ctx, (0, 2, 1, 3)).reshape(b, t, d)
    else:
        raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    return linear(get(p, layout.out), ctx)


def mlp(
    p: Params, x: jax.Array, layout: BlockLayout, act: Callable[[jax.Array], jax.Array], dtype: Any
) -> jax.Array:
    """Two-layer MLP, hidden units in ``dtype``; with ``layout.swiglu`` fc1 holds [gate | up] and the
    hidden is silu(gate) * up."""
    if layout.swiglu:
        gate, up = jnp.split(linear(get(p, layout.fc1), x), 2, axis=-1)
        h = (jax.nn.silu(gate) * up).astype(dtype)
    else:
        h = act(linear(get(p, layout.fc1), x)).astype(dtype)
    return linear(get(p, layout.fc2), h)


def encoder_block(
    p: Params,
    x: jax.Array,
    layout: BlockLayout,
    *,
    num_heads: int,
    eps: float,
    act: Callable[[jax.Array], jax.Array],
    dtype: Any,
    impl: str = "cpu",
) -> jax.Array:
    """One pre-LN transformer block: x + ls1 * attn(ln1(x)); x + ls2 * mlp(ln2(x)). Residuals in float32.

    Blocks packed by :func:`pack_linears` (CPU) run as one oneDNN call (:func:`onednn.encoder_block`),
    except SwiGLU ones and activations oneDNN lacks, whose linears and attention still go to oneDNN one by
    one.
    """
    if "packed" in p.get(FUSED_QKV, {}) and not layout.swiglu and act in ONEDNN_ACTIVATIONS:
        weights = {
            "ln1": get(p, layout.norm1),
            "qkv": p[FUSED_QKV],
            "out": get(p, layout.out),
            "ln2": get(p, layout.norm2),
            "fc1": get(p, layout.fc1),
            "fc2": get(p, layout.fc2),
        }
        for key, path in (("ls1", layout.layer_scale1), ("ls2", layout.layer_scale2)):
            if path:
                weights[key] = get(p, path)
        return onednn.encoder_block(x, weights, num_heads, eps, ONEDNN_ACTIVATIONS[act])
    h = self_attention(p, layer_norm(get(p, layout.norm1), x, eps), layout, num_heads, dtype, impl)
    if layout.layer_scale1:
        h = h * get(p, layout.layer_scale1).astype(F32)
    x = x + h
    h = mlp(p, layer_norm(get(p, layout.norm2), x, eps).astype(dtype), layout, act, dtype)
    if layout.layer_scale2:
        h = h * get(p, layout.layer_scale2).astype(F32)
    return x + h


def encoder(
    layers: Params,
    x: jax.Array,
    layout: BlockLayout,
    num_layers: int,
    impl: str | None = None,
    **block_kwargs: Any,
) -> jax.Array:
    """Runs blocks ``layers["0"] .. layers[str(num_layers - 1)]``; ``impl=None`` picks :func:`default_impl`.

    A Python loop (unrolled under jit) rather than ``lax.scan``: the layers keep their HF names, and the
    unrolled form was measurably faster on CPU.
    """
    impl = impl or default_impl()
    for i in range(num_layers):
        x = encoder_block(layers[str(i)], x, layout, impl=impl, **block_kwargs)
    return x


# On CPU a tower runs over groups of about this many token rows at a time (see :func:`group_size`);
# with the oneDNN kernels (:func:`pack_linears`) larger groups, whose GEMMs keep AMX busier, measured
# +15 % (bf16 DINOv2-base); their attention runs image by image either way.
CPU_GROUP_ROWS = 1100
ONEDNN_GROUP_ROWS = 2100


def group_rows(layers: Params) -> int:
    """The CPU group size in token rows for these encoder ``layers``: packed or XLA's dots."""
    first = next(iter(layers.values()), {})
    return ONEDNN_GROUP_ROWS if "packed" in first.get(FUSED_QKV, {}) else CPU_GROUP_ROWS


def group_size(batch: int, tokens: int, rows: int | None = None) -> int:
    """How many examples the CPU path runs at once: the largest divisor of ``batch`` whose rows fit ``rows``.

    On CPU a whole batch of activations (8 images x 257 tokens x 3072 MLP units is 25 MB in float32) falls
    out of the caches between the matmuls of a block; ~1k rows at a time keeps them in L2/L3 and was
    measurably faster. On GPU/TPU the whole batch runs at once (returns ``batch``). ``rows`` defaults to
    :data:`CPU_GROUP_ROWS`.
    """
    if default_impl() != "cpu":
        return batch
    rows = CPU_GROUP_ROWS if rows is None else rows
    fits = [g for g in range(1, batch + 1) if batch % g == 0 and g * tokens <= max(rows, tokens)]
    return max(fits)


def map_groups(fn: Callable[[jax.Array], jax.Array], x: jax.Array, group: int) -> jax.Array:
    """``fn`` over ``x`` in consecutive groups of ``group`` examples (``lax.map``), results concatenated.

    ``fn`` must treat examples independently (the towers do), so the result equals ``fn(x)``.
    """
    b = x.shape[0]
    if group >= b:
        return fn(x)
    if b % group:
        raise ValueError(f"group {group} does not divide the batch {b}")
    y = lax.map(fn, x.reshape(b // group, group, *x.shape[1:]))
    return y.reshape(b, *y.shape[2:])


def patch_embed(p: Params, pixels: jax.Array, patch: int) -> jax.Array:
    """Non-overlapping patch projection of NHWC ``pixels`` -> ``[B, gh * gw, D]`` (strided conv as matmul).

    ``p["kernel"]`` is ``[patch, patch, C, D]``; rows/columns beyond a whole number of patches are dropped,
    as a stride-``patch`` convolution does.
    """
    b, h, w, c = pixels.shape
    gh, gw = h // patch, w // patch
    x = pixels[:, : gh * patch, : gw * patch, :].reshape(b, gh, patch, gw, patch, c)
    x = jnp.transpose(x, (0, 1, 3, 2, 4, 5)).reshape(b, gh * gw, patch * patch * c)
    kernel = p["kernel"].reshape(patch * patch * c, -1)
    y = jnp.dot(x.astype(kernel.dtype), kernel, preferred_element_type=F32)
    return y + p["bias"].astype(F32)
