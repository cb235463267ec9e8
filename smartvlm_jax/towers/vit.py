"""Shared pre-LayerNorm ViT pieces for the frozen towers, as pure functions over parameter dicts.

The towers are frozen, so they are written as plain functions of a nested parameter dict whose keys
mirror the Hugging Face checkpoint (``encoder.layer.0.attention.attention.query.kernel``); that keeps the
converter a rename table and lets the trainer treat tower weights as data. Every matmul takes its input
in the weights' dtype and accumulates in float32 (``preferred_element_type``), and LayerNorm, softmax and
the residual stream stay float32: with bfloat16 weights that is the fast path of XLA's CPU backend and the
usual mixed-precision recipe on TPU/GPU; with float32 weights it is plain fp32.

This module says what the encoders compute, not how it runs: their linears, attention, blocks and batch go
through an :class:`Ops` that :mod:`smartvlm_jax.towers.backends` picks (XLA's dots with the platform's
attention formulation, or the oneDNN kernels on one-device CPU) and prepares the weights for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from smartvlm_jax.activations import gelu_erf
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


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Looks up an HF activation name; raises ``ValueError`` naming it when unsupported."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported hidden_act {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def linear(p: Params, x: jax.Array) -> jax.Array:
    """``x @ kernel + bias`` with inputs in the kernel's dtype and a float32 result [..., N].

    ``p`` holds ``kernel`` [K, N] (and maybe ``bias`` [N]), as in the checkpoint.
    """
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


def qkv_projection(p: Params, layout: BlockLayout, width: int, xp: Any = jnp) -> Params:
    """The q, k and v projections of a block side by side: ``kernel`` [D, 3D], float32 ``bias`` [3D]
    (zeros where the checkpoint has none).

    One [D, 3D] matmul instead of three [D, D] ones: a wider output keeps the matmul library busier. Blocks
    prepared by :func:`fuse_qkv` carry it ready-made (in whatever form the backend prepared it:
    :func:`smartvlm_jax.towers.backends.prepare_layers`); HF-named ones get it here, under jit, which on
    CPU costs a noticeable share of a base tower's forward (XLA's CPU concatenation is slow, and upcasts
    bfloat16; docs/performance.md). ``xp``: ``jax.numpy`` (traced), or ``numpy`` for host arrays.
    """
    if FUSED_QKV in p:
        return p[FUSED_QKV]
    parts = [get(p, path) for path in (layout.query, layout.key, layout.value)]
    kernel = xp.concatenate([xp.asarray(part["kernel"]) for part in parts], axis=1)
    biases = [xp.asarray(part["bias"]).astype(F32) if "bias" in part else None for part in parts]
    bias = xp.concatenate([xp.zeros((width,), F32) if b is None else b for b in biases])
    return {"kernel": kernel, "bias": bias}


def fuse_qkv(layers: Params, layout: BlockLayout, width: int) -> dict[str, Any]:
    """``layers`` (``{"0": block, ...}``) with each block's q, k, v projections replaced by one fused one.

    Run once, outside jit, on frozen weights: the forward then finds ``block[FUSED_QKV]`` and skips the
    per-call concatenation. Leaves other than q/k/v are shared, not copied. The result is for running the
    tower (``Tower.ready_params``), not for saving: checkpoints keep the HF names.
    """
    separate = tuple(f"{path}." for path in (layout.query, layout.key, layout.value))
    fused = {}
    for name, block in layers.items():
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(block)):  # eval_shape'd
            projection = qkv_projection(block, layout, width)
        else:  # on the host: a jitted concatenation would be one more XLA program per tower to compile
            projection = jax.device_put(qkv_projection(block, layout, width, xp=np))
        rest = {key: leaf for key, leaf in flatten(block).items() if not key.startswith(separate)}
        fused[name] = {**unflatten(rest), FUSED_QKV: projection}
    return fused


class Ops(Protocol):
    """How the encoder's heavy operations run: the seam between this module's math and a backend.

    The tower forwards get one from :func:`smartvlm_jax.towers.backends.ops_for` (XLA's dots, or the
    oneDNN kernels on packed weights) at trace time and pass it down; every function here that takes
    ``ops`` runs its linears, attention, blocks or batch through it and nothing else backend-specific.
    """

    def linear(self, p: Params, x: jax.Array) -> jax.Array:
        """:func:`linear` on a block's weights ``p`` (as the backend prepared them): float32 [..., N]."""

    def attention(self, qkv: Params, x: jax.Array, num_heads: int, dtype: Any) -> jax.Array:
        """Softmax self-attention of ``x`` [B, T, D] through the fused projection ``qkv``
        (:func:`qkv_projection`), before the output projection -> [B, T, D] (float32 or ``dtype``).

        Each head's queries are scaled by 1/sqrt(Dh); q, k, v and the softmax enter their matmuls in
        ``dtype``, the scores and their row sums stay float32."""

    def block(self, p: Params, x: jax.Array, layout: BlockLayout, **kwargs: Any) -> jax.Array:
        """One encoder block: ``encoder_block(p, x, layout, ops=self, **kwargs)`` (``kwargs``: its
        ``num_heads``, ``eps``, ``act``, ``dtype``), or a backend's single kernel for it."""

    def in_groups(self, fn: Callable[[jax.Array], jax.Array], x: jax.Array, tokens: int) -> jax.Array:
        """``fn(x)`` for ``fn`` treating examples independently, possibly run over groups of examples
        (``tokens`` rows each) that fit the backend's caches; equal to ``fn(x)``."""


def self_attention(
    p: Params, x: jax.Array, layout: BlockLayout, num_heads: int, dtype: Any, ops: Ops
) -> jax.Array:
    """Multi-head self-attention of ``x`` [B, T, D] -> [B, T, D] float32: fused q/k/v projection,
    softmax attention (:meth:`Ops.attention`), output projection."""
    ctx = ops.attention(qkv_projection(p, layout, x.shape[-1]), x, num_heads, dtype)
    return ops.linear(get(p, layout.out), ctx)


def mlp(
    p: Params,
    x: jax.Array,
    layout: BlockLayout,
    act: Callable[[jax.Array], jax.Array],
    dtype: Any,
    ops: Ops,
) -> jax.Array:
    """Two-layer MLP, hidden units in ``dtype``; with ``layout.swiglu`` fc1 holds [gate | up] and the
    hidden is silu(gate) * up."""
    if layout.swiglu:
        gate, up = jnp.split(ops.linear(get(p, layout.fc1), x), 2, axis=-1)
        h = (jax.nn.silu(gate) * up).astype(dtype)
    else:
        h = act(ops.linear(get(p, layout.fc1), x)).astype(dtype)
    return ops.linear(get(p, layout.fc2), h)


def encoder_block(
    p: Params,
    x: jax.Array,
    layout: BlockLayout,
    *,
    num_heads: int,
    eps: float,
    act: Callable[[jax.Array], jax.Array],
    dtype: Any,
    ops: Ops,
) -> jax.Array:
    """One pre-LN transformer block: x + ls1 * attn(ln1(x)); x + ls2 * mlp(ln2(x)). Residuals in float32."""
    h = self_attention(p, layer_norm(get(p, layout.norm1), x, eps), layout, num_heads, dtype, ops)
    if layout.layer_scale1:
        h = h * get(p, layout.layer_scale1).astype(F32)
    x = x + h
    h = mlp(p, layer_norm(get(p, layout.norm2), x, eps).astype(dtype), layout, act, dtype, ops)
    if layout.layer_scale2:
        h = h * get(p, layout.layer_scale2).astype(F32)
    return x + h


def encoder(
    layers: Params, x: jax.Array, layout: BlockLayout, config: Mapping[str, Any], dtype: Any, ops: Ops
) -> jax.Array:
    """Runs blocks ``layers["0"] .. layers[str(num_hidden_layers - 1)]`` on the float32 stream ``x``.

    ``config`` is the part's HF config; its ``num_hidden_layers``, ``num_attention_heads``,
    ``layer_norm_eps`` and ``hidden_act`` (:func:`activation`; ``ValueError`` if unknown) shape the blocks.
    A Python loop (unrolled under jit) rather than ``lax.scan``: the layers keep their HF names, and the
    unrolled form was measurably faster on CPU.
    """
    kwargs = {
        "num_heads": config["num_attention_heads"],
        "eps": config["layer_norm_eps"],
        "act": activation(config["hidden_act"]),
        "dtype": dtype,
    }
    for i in range(config["num_hidden_layers"]):
        x = ops.block(layers[str(i)], x, layout, **kwargs)
    return x


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
