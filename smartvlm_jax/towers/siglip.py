"""SigLIP vision and text towers (base-patch16-224, so400m-patch14-384, ... from their HF configs).

Vision: ``last_hidden_state`` [B, (S / p)^2, D] after ``post_layernorm``, as ``SiglipVisionModel``
(position embeddings are used as stored, so the input must be ``image_size`` square, as HF's default);
the attention-pooling head is converted and available through :func:`vision_pooled`.
Text: ``last_hidden_state`` [B, T, D] after ``final_layer_norm`` with no attention mask (as the reference
calls it); the pooled output (last token -> ``head``) is :func:`text_pooled`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from smartvlm_jax.towers import backends, vit
from smartvlm_jax.towers.dinov2 import _int
from smartvlm_jax.towers.params import ParamSpec, Specs, layer_norm_specs, linear_specs

# transformers.SiglipVisionConfig / SiglipTextConfig defaults (siglip-base-patch16-224).
VISION_DEFAULTS: dict[str, Any] = {
    "model_type": "siglip_vision_model",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 16,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "vision_use_head": True,
}
TEXT_DEFAULTS: dict[str, Any] = {
    "model_type": "siglip_text_model",
    "vocab_size": 32000,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 64,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "pad_token_id": 1,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
}

LAYOUT = vit.BlockLayout(
    norm1="layer_norm1",
    query="self_attn.q_proj",
    key="self_attn.k_proj",
    value="self_attn.v_proj",
    out="self_attn.out_proj",
    norm2="layer_norm2",
    fc1="mlp.fc1",
    fc2="mlp.fc2",
)


def _encoder_specs(config: dict[str, Any]) -> Specs:
    d, hidden = config["hidden_size"], config["intermediate_size"]
    specs: Specs = {}
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layers.{i}"
        specs.update(layer_norm_specs(f"{p}.layer_norm1", f"{p}.layer_norm1", d))
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            specs.update(linear_specs(f"{p}.self_attn.{name}", f"{p}.self_attn.{name}", d, d))
        specs.update(layer_norm_specs(f"{p}.layer_norm2", f"{p}.layer_norm2", d))
        specs.update(linear_specs(f"{p}.mlp.fc1", f"{p}.mlp.fc1", d, hidden))
        specs.update(linear_specs(f"{p}.mlp.fc2", f"{p}.mlp.fc2", hidden, d))
    return specs


def vision_param_specs(config: dict[str, Any]) -> Specs:
    """The weight table of a ``SiglipVisionModel`` (HF keys without the ``vision_model.`` prefix)."""
    d, c, hidden = config["hidden_size"], config["num_channels"], config["intermediate_size"]
    patch = _int(config["patch_size"])
    n_pos = (_int(config["image_size"]) // patch) ** 2
    specs: Specs = {
        "embeddings.patch_embedding.kernel": ParamSpec(
            (patch, patch, c, d), "embeddings.patch_embedding.weight", "conv"
        ),
        "embeddings.patch_embedding.bias": ParamSpec((d,), "embeddings.patch_embedding.bias", init="zeros"),
        "embeddings.position_embedding.embedding": ParamSpec(
            (n_pos, d), "embeddings.position_embedding.weight"
        ),
    }
    specs.update(_encoder_specs(config))
    specs.update(layer_norm_specs("post_layernorm", "post_layernorm", d))
    if config["vision_use_head"]:
        # torch.nn.MultiheadAttention keeps q/k/v stacked as in_proj_weight (3D, D); stored as is.
        specs["head.probe"] = ParamSpec((1, 1, d), "head.probe")
        specs["head.attention.in_proj_weight"] = ParamSpec((3 * d, d), "head.attention.in_proj_weight")
        specs["head.attention.in_proj_bias"] = ParamSpec(
            (3 * d,), "head.attention.in_proj_bias", init="zeros"
        )
        specs.update(linear_specs("head.attention.out_proj", "head.attention.out_proj", d, d))
        specs.update(layer_norm_specs("head.layernorm", "head.layernorm", d))
        specs.update(linear_specs("head.mlp.fc1", "head.mlp.fc1", d, hidden))
        specs.update(linear_specs("head.mlp.fc2", "head.mlp.fc2", hidden, d))
    return specs


def text_param_specs(config: dict[str, Any]) -> Specs:
    """The weight table of a ``SiglipTextModel`` (HF keys without the ``text_model.`` prefix)."""
    d = config["hidden_size"]
    specs: Specs = {
        "embeddings.token_embedding.embedding": ParamSpec(
            (config["vocab_size"], d), "embeddings.token_embedding.weight"
        ),
        "embeddings.position_embedding.embedding": ParamSpec(
            (config["max_position_embeddings"], d), "embeddings.position_embedding.weight"
        ),
    }
    specs.update(_encoder_specs(config))
    specs.update(layer_norm_specs("final_layer_norm", "final_layer_norm", d))
    specs.update(linear_specs("head", "head", d, config.get("projection_size") or d))
    return specs


def prepare(params: dict[str, Any], config: dict[str, Any], pack: bool = False) -> dict[str, Any]:
    """The parameters the forwards run fastest on, vision or text (:func:`backends.prepare_layers`;
    ``pack``: for the one-device CPU kernels)."""
    layers = backends.prepare_layers(params["encoder"]["layers"], LAYOUT, int(config["hidden_size"]), pack)
    return {**params, "encoder": {**params["encoder"], "layers": layers}}


def vision_forward(
    params: dict[str, Any], pixels: jax.Array, config: dict[str, Any], dtype: Any
) -> jax.Array:
    """NHWC pixels [B, S, S, C] -> ``last_hidden_state`` [B, (S / p)^2, D] (float32), on the ops
    :func:`backends.ops_for` picks (on CPU: in groups of a few images)."""
    patch = _int(config["patch_size"])
    tokens = (pixels.shape[1] // patch) * (pixels.shape[2] // patch)
    ops = backends.ops_for(params["encoder"]["layers"], config.get(backends.IMPL_KEY))
    return ops.in_groups(lambda px: _vision_forward(params, px, config, dtype, ops), pixels, tokens)


def _vision_forward(
    params: dict[str, Any], pixels: jax.Array, config: dict[str, Any], dtype: Any, ops: vit.Ops
) -> jax.Array:
    patch = _int(config["patch_size"])
    emb = params["embeddings"]
    x = vit.patch_embed(emb["patch_embedding"], pixels, patch)
    pos = emb["position_embedding"]["embedding"]
    if x.shape[1] != pos.shape[0]:
        raise ValueError(
            f"SigLIP vision expects {config['image_size']}x{config['image_size']} pixels "
            f"({pos.shape[0]} patches); got {pixels.shape[1]}x{pixels.shape[2]}"
        )
    x = vit.encoder(params["encoder"]["layers"], x + pos.astype(jnp.float32), LAYOUT, config, dtype, ops)
    return vit.layer_norm(params["post_layernorm"], x, config["layer_norm_eps"])


def vision_pooled(params: dict[str, Any], hidden: jax.Array, config: dict[str, Any], dtype: Any) -> jax.Array:
    """The multi-head attention-pooling head on ``last_hidden_state`` -> [B, D] (``pooler_output``)."""
    head = params["head"]
    b, t, d = hidden.shape
    heads = config["num_attention_heads"]
    w, bias = head["attention"]["in_proj_weight"], head["attention"]["in_proj_bias"]
    wq, wk, wv = jnp.split(w.astype(jnp.float32), 3, axis=0)
    bq, bk, bv = jnp.split(bias.astype(jnp.float32), 3)
    probe = jnp.broadcast_to(head["probe"].astype(jnp.float32), (b, 1, d))
    q = (probe @ wq.T + bq) * ((d // heads) ** -0.5)
    k, v = hidden @ wk.T + bk, hidden @ wv.T + bv
    ctx = vit.attend(
        q.reshape(b, 1, heads, -1), k.reshape(b, t, heads, -1), v.reshape(b, t, heads, -1), dtype
    ).reshape(b, 1, d)
    x = vit.linear(head["attention"]["out_proj"], ctx)
    h = vit.layer_norm(head["layernorm"], x, config["layer_norm_eps"])
    h = vit.linear(
        head["mlp"]["fc2"], vit.activation(config["hidden_act"])(vit.linear(head["mlp"]["fc1"], h))
    )
    return (x + h)[:, 0]


def text_forward(params: dict[str, Any], ids: jax.Array, config: dict[str, Any], dtype: Any) -> jax.Array:
    """Token ids [B, T] (T <= max_position_embeddings) -> ``last_hidden_state`` [B, T, D] (float32)."""
    t = ids.shape[1]
    n_pos = params["embeddings"]["position_embedding"]["embedding"].shape[0]
    if t > n_pos:
        raise ValueError(f"sequence length {t} exceeds max_position_embeddings {n_pos}")
    ops = backends.ops_for(params["encoder"]["layers"], config.get(backends.IMPL_KEY))
    return ops.in_groups(lambda i: _text_forward(params, i, config, dtype, ops), ids, t)


def _text_forward(
    params: dict[str, Any], ids: jax.Array, config: dict[str, Any], dtype: Any, ops: vit.Ops
) -> jax.Array:
    emb = params["embeddings"]
    t = ids.shape[1]
    pos = emb["position_embedding"]["embedding"]
    x = jnp.take(emb["token_embedding"]["embedding"], ids, axis=0).astype(jnp.float32)
    x = x + pos[:t].astype(jnp.float32)
    x = vit.encoder(params["encoder"]["layers"], x, LAYOUT, config, dtype, ops)
    return vit.layer_norm(params["final_layer_norm"], x, config["layer_norm_eps"])


def text_pooled(params: dict[str, Any], hidden: jax.Array) -> jax.Array:
    """SigLIP's text ``pooler_output``: the last position's state through ``head`` -> [B, projection]."""
    return vit.linear(params["head"], hidden[:, -1])
