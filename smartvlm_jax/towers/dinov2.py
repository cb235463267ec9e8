"""DINOv2 vision tower (any size its HF config describes: S/B/L with GELU MLP, G with SwiGLU).

Output: ``last_hidden_state`` [B, 1 + gh * gw, D] after the final LayerNorm, CLS first, exactly as
``transformers.Dinov2Model``. Position embeddings are stored for the config's ``image_size`` (518 for the
released models) and resampled with PyTorch's bicubic kernel to the input's patch grid.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from smartvlm_jax.towers import backends, vit
from smartvlm_jax.towers.params import ParamSpec, Specs, layer_norm_specs, linear_specs

# transformers.Dinov2Config defaults (dinov2-base), used for keys a hand-written config leaves out.
DEFAULTS: dict[str, Any] = {
    "model_type": "dinov2",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "mlp_ratio": 4,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-6,
    "image_size": 224,
    "patch_size": 14,
    "num_channels": 3,
    "qkv_bias": True,
    "layerscale_value": 1.0,
    "use_swiglu_ffn": False,
    "use_mask_token": True,
    "initializer_range": 0.02,
}

LAYOUT = vit.BlockLayout(
    norm1="norm1",
    query="attention.attention.query",
    key="attention.attention.key",
    value="attention.attention.value",
    out="attention.output.dense",
    norm2="norm2",
    fc1="mlp.fc1",
    fc2="mlp.fc2",
    layer_scale1="layer_scale1.lambda1",
    layer_scale2="layer_scale2.lambda1",
)
SWIGLU_LAYOUT = vit.BlockLayout(
    **{**LAYOUT.__dict__, "fc1": "mlp.weights_in", "fc2": "mlp.weights_out", "swiglu": True}
)


def _int(value: Any) -> int:
    """HF allows ``image_size``/``patch_size`` as an int or a pair; the towers support square ones."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"non-square sizes are not supported: {value}")
        return int(value[0])
    return int(value)


def mlp_hidden(config: dict[str, Any]) -> int:
    """Hidden width of the MLP; for SwiGLU, HF's rounding of 2/3 of it up to a multiple of 8."""
    hidden = int(config["hidden_size"] * config["mlp_ratio"])
    if config["use_swiglu_ffn"]:
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
    return hidden


def param_specs(config: dict[str, Any]) -> Specs:
    """The weight table of a ``Dinov2Model`` (HF keys without a prefix)."""
    d, c = config["hidden_size"], config["num_channels"]
    patch = _int(config["patch_size"])
    n_pos = (_int(config["image_size"]) // patch) ** 2 + 1
    specs: Specs = {
        "embeddings.cls_token": ParamSpec((1, 1, d), "embeddings.cls_token"),
        "embeddings.position_embeddings": ParamSpec((1, n_pos, d), "embeddings.position_embeddings"),
        "embeddings.patch_embeddings.projection.kernel": ParamSpec(
            (patch, patch, c, d), "embeddings.patch_embeddings.projection.weight", "conv"
        ),
        "embeddings.patch_embeddings.projection.bias": ParamSpec(
            (d,), "embeddings.patch_embeddings.projection.bias", init="zeros"
        ),
    }
    if config["use_mask_token"]:
        # Unused for features, but present in every released checkpoint: kept so loading stays strict.
        specs["embeddings.mask_token"] = ParamSpec((1, d), "embeddings.mask_token", init="zeros")
    hidden = mlp_hidden(config)
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        specs.update(layer_norm_specs(f"{p}.norm1", f"{p}.norm1", d))
        for name in ("query", "key", "value"):
            q = f"{p}.attention.attention.{name}"
            specs.update(linear_specs(q, q, d, d, bias=config["qkv_bias"]))
        specs.update(linear_specs(f"{p}.attention.output.dense", f"{p}.attention.output.dense", d, d))
        specs.update(layer_norm_specs(f"{p}.norm2", f"{p}.norm2", d))
        if config["use_swiglu_ffn"]:
            specs.update(linear_specs(f"{p}.mlp.weights_in", f"{p}.mlp.weights_in", d, 2 * hidden))
            specs.update(linear_specs(f"{p}.mlp.weights_out", f"{p}.mlp.weights_out", hidden, d))
        else:
            specs.update(linear_specs(f"{p}.mlp.fc1", f"{p}.mlp.fc1", d, hidden))
            specs.update(linear_specs(f"{p}.mlp.fc2", f"{p}.mlp.fc2", hidden, d))
        for k in (1, 2):
            key = f"{p}.layer_scale{k}.lambda1"
            specs[key] = ParamSpec((d,), key, init="const", value=float(config["layerscale_value"]))
    specs.update(layer_norm_specs("layernorm", "layernorm", d))
    return specs


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] matrix of torch ``interpolate(mode="bicubic", align_corners=False)`` on one axis.

    PyTorch samples source coordinate (dst + 0.5) * in / out - 0.5 with the Keys cubic (A = -0.75), no
    antialiasing, and clamps the four taps to the border; a 2-D resize is this matrix on each axis.
    """
    a = -0.75
    m = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for dst in range(out_size):
        src = scale * (dst + 0.5) - 0.5
        base = int(np.floor(src))
        t = src - base
        weights = (
            ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
        )
        for k, w in enumerate(weights):
            m[dst, min(max(base - 1 + k, 0), in_size - 1)] += w
    return m.astype(np.float32)


def position_embeddings(pos: jax.Array, grid_h: int, grid_w: int) -> jax.Array:
    """Stored [1, 1 + n * n, D] position embeddings resampled to a ``grid_h`` x ``grid_w`` patch grid."""
    n = int(round((pos.shape[1] - 1) ** 0.5))
    if grid_h == n and grid_w == n:
        return pos.astype(jnp.float32)
    grid = pos[0, 1:].astype(jnp.float32).reshape(n, n, -1)
    mh = jnp.asarray(bicubic_matrix(n, grid_h))
    mw = jnp.asarray(bicubic_matrix(n, grid_w))
    hi = jax.lax.Precision.HIGHEST
    grid = jnp.einsum("Hh,hwd->Hwd", mh, grid, precision=hi)
    grid = jnp.einsum("Ww,Hwd->HWd", mw, grid, precision=hi)
    return jnp.concatenate([pos[:, :1].astype(jnp.float32), grid.reshape(1, grid_h * grid_w, -1)], axis=1)


def block_layout(config: dict[str, Any]) -> vit.BlockLayout:
    """The block layout of this config: :data:`SWIGLU_LAYOUT` (the giant model) or :data:`LAYOUT`."""
    return SWIGLU_LAYOUT if config["use_swiglu_ffn"] else LAYOUT


def forward(params: dict[str, Any], pixels: jax.Array, config: dict[str, Any], dtype: Any) -> jax.Array:
    """NHWC float pixels [B, H, W, C] -> ``last_hidden_state`` [B, 1 + (H // p) * (W // p), D] (float32).

    Runs on the ops :func:`backends.ops_for` picks for ``params``' encoder (on CPU: in groups of a few
    images; elsewhere all at once).
    """
    patch = _int(config["patch_size"])
    tokens = 1 + (pixels.shape[1] // patch) * (pixels.shape[2] // patch)
    ops = backends.ops_for(params["encoder"]["layer"], config.get(backends.IMPL_KEY))
    return ops.in_groups(lambda px: _forward(params, px, config, dtype, ops), pixels, tokens)


def prepare(params: dict[str, Any], config: dict[str, Any], pack: bool = False) -> dict[str, Any]:
    """The parameters :func:`forward` runs fastest on (:func:`backends.prepare_layers`; ``pack``: for the
    one-device CPU kernels)."""
    width = int(config["hidden_size"])
    layers = backends.prepare_layers(params["encoder"]["layer"], block_layout(config), width, pack)
    return {**params, "encoder": {**params["encoder"], "layer": layers}}


def _forward(
    params: dict[str, Any], pixels: jax.Array, config: dict[str, Any], dtype: Any, ops: vit.Ops
) -> jax.Array:
    patch = _int(config["patch_size"])
    emb = params["embeddings"]
    x = vit.patch_embed(emb["patch_embeddings"]["projection"], pixels, patch)
    b = x.shape[0]
    cls = jnp.broadcast_to(emb["cls_token"].astype(jnp.float32), (b, 1, x.shape[-1]))
    x = jnp.concatenate([cls, x], axis=1)
    x = x + position_embeddings(
        emb["position_embeddings"], pixels.shape[1] // patch, pixels.shape[2] // patch
    )
    x = vit.encoder(params["encoder"]["layer"], x, block_layout(config), config, dtype, ops)
    return vit.layer_norm(params["layernorm"], x, config["layer_norm_eps"])
