"""BERT text tower (bert-base-uncased, bert-base-multilingual-cased, ... from their HF configs), for the
SMART baseline.

Output of :func:`text_forward`: ``last_hidden_state`` [B, T, D] of ``transformers.BertModel`` called with
``attention_mask = ids != pad_token_id``: the mask is derived from the ids, so padded batches need no extra
input (a real token never has the pad id) and every valid position equals the unpadded sentence's states.

Its questions are tokenised by transformers' ``BertTokenizer`` from the tower's directory
(:class:`smartvlm_jax.towers.tokenizer.TextTokenizer`), padded and truncated to ``MAX_QLEN`` (110), the SMART
baseline's maximum question length.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from smartvlm_jax.towers import vit
from smartvlm_jax.towers.params import ParamSpec, Specs, layer_norm_specs, linear_specs

# transformers.BertConfig defaults == bert-base-uncased (multilingual-cased differs in vocab_size: 119547).
DEFAULTS: dict[str, Any] = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "initializer_range": 0.02,
}
MAX_QLEN = 110  # the SMART baseline keeps at most 110 token states per question
F32 = jnp.float32


def text_param_specs(config: dict[str, Any]) -> Specs:
    """The weight table of a ``BertModel`` with its pooler (HF keys without the ``bert.`` prefix)."""
    d, hidden = config["hidden_size"], config["intermediate_size"]
    specs: Specs = {
        "embeddings.word_embeddings.embedding": ParamSpec(
            (config["vocab_size"], d), "embeddings.word_embeddings.weight"
        ),
        "embeddings.position_embeddings.embedding": ParamSpec(
            (config["max_position_embeddings"], d), "embeddings.position_embeddings.weight"
        ),
        "embeddings.token_type_embeddings.embedding": ParamSpec(
            (config["type_vocab_size"], d), "embeddings.token_type_embeddings.weight"
        ),
    }
    specs.update(layer_norm_specs("embeddings.LayerNorm", "embeddings.LayerNorm", d))
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            specs.update(linear_specs(f"{p}.attention.self.{name}", f"{p}.attention.self.{name}", d, d))
        specs.update(linear_specs(f"{p}.attention.output.dense", f"{p}.attention.output.dense", d, d))
        norm = f"{p}.attention.output.LayerNorm"
        specs.update(layer_norm_specs(norm, norm, d))
        specs.update(linear_specs(f"{p}.intermediate.dense", f"{p}.intermediate.dense", d, hidden))
        specs.update(linear_specs(f"{p}.output.dense", f"{p}.output.dense", hidden, d))
        specs.update(layer_norm_specs(f"{p}.output.LayerNorm", f"{p}.output.LayerNorm", d))
    specs.update(linear_specs("pooler.dense", "pooler.dense", d, d))
    return specs


def attention_mask(ids: jax.Array, config: dict[str, Any]) -> jax.Array:
    """bool [B, T]: True at real tokens (ids other than the config's ``pad_token_id``)."""
    return ids != int(config.get("pad_token_id") or 0)


def _self_attention(p: dict[str, Any], x: jax.Array, mask: jax.Array, heads: int, dtype: Any) -> jax.Array:
    b, t, d = x.shape
    hd = d // heads
    split = lambda a: a.reshape(b, t, heads, hd)
    q = split(vit.linear(p["query"], x) * (hd**-0.5))
    k, v = split(vit.linear(p["key"], x)), split(vit.linear(p["value"], x))
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(dtype), k.astype(dtype), preferred_element_type=F32)
    # Padded keys get the most negative float, as transformers' extended attention mask does.
    s = jnp.where(mask[:, None, None, :], s, jnp.finfo(F32).min)
    probs = jax.nn.softmax(s, axis=-1)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), v.astype(dtype), preferred_element_type=F32)
    return ctx.reshape(b, t, d)


def text_forward(params: dict[str, Any], ids: jax.Array, config: dict[str, Any], dtype: Any) -> jax.Array:
    """Token ids [B, T] -> ``last_hidden_state`` [B, T, D] (float32), post-LN BERT with the pad mask."""
    emb = params["embeddings"]
    t = ids.shape[1]
    pos = emb["position_embeddings"]["embedding"]
    if t > pos.shape[0]:
        raise ValueError(f"sequence length {t} exceeds max_position_embeddings {pos.shape[0]}")
    x = jnp.take(emb["word_embeddings"]["embedding"], ids, axis=0).astype(F32)
    # token_type_ids are all 0 for single sentences (what the tokenizer returns for one question).
    x = x + pos[:t].astype(F32) + emb["token_type_embeddings"]["embedding"][0].astype(F32)
    eps = config["layer_norm_eps"]
    x = vit.layer_norm(emb["LayerNorm"], x, eps)
    mask = attention_mask(ids, config)
    act = vit.activation(config["hidden_act"])
    for i in range(config["num_hidden_layers"]):  # unrolled under jit, like the ViT towers
        p = params["encoder"]["layer"][str(i)]
        a = _self_attention(p["attention"]["self"], x, mask, config["num_attention_heads"], dtype)
        a = vit.linear(p["attention"]["output"]["dense"], a)
        x = vit.layer_norm(p["attention"]["output"]["LayerNorm"], x + a, eps)
        h = act(vit.linear(p["intermediate"]["dense"], x))
        h = vit.linear(p["output"]["dense"], h)
        x = vit.layer_norm(p["output"]["LayerNorm"], x + h, eps)
    return x


def text_pooled(params: dict[str, Any], hidden: jax.Array, config: dict[str, Any], dtype: Any) -> jax.Array:
    """BERT's ``pooler_output``: tanh(dense(state of [CLS])) -> [B, D]."""
    del config, dtype
    return jnp.tanh(vit.linear(params["pooler"]["dense"], hidden[:, 0]))


# Keys of BertForPreTraining / BertForMaskedLM checkpoints (bert-base-uncased's) outside the encoder.
PRETRAINING_HEAD_KEYS = (
    "cls.predictions.bias",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.transform.LayerNorm.gamma",
    "cls.predictions.transform.LayerNorm.beta",
    "cls.seq_relationship.weight",
    "cls.seq_relationship.bias",
)
