"""A step's batch as ``jax.ShapeDtypeStruct`` s, for compiling before any data is read: the trainer's
programs compiled while the features are extracted (``train.ahead``) and the compile-only report's
(``aot.programs``). Keys and dtypes are those ``pipeline.make_pipeline`` (images) and
``train.GatherCached`` (stored features, float32 on their way to the device) give.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from smartvlm_jax import puzzles, variants
from smartvlm_jax.features.columns import FrozenTowers
from smartvlm_jax.towers import bert
from smartvlm_jax.towers.tokenizer import SIGLIP_MAX_LENGTH

LABEL_SHAPES = {  # the label fields of a batch, per example: shape, dtype
    "labels": ((puzzles.NUM_DECODE_STEPS,), jnp.int32),
    "puzzle_ids": ((), jnp.int32),
    "instance_ids": ((), jnp.int32),
    "option_values": ((5, puzzles.NUM_DECODE_STEPS), jnp.int32),
    "answer_index": ((), jnp.int32),
    "mask": ((), jnp.bool_),
}


def question_length(text_kind: str, text_config: Mapping | None = None) -> int:
    """T, the question ids' length: BERT's MAX_QLEN, SigLIP's 64 (at most its position table)."""
    if text_kind == "bert":
        return bert.MAX_QLEN
    return min(SIGLIP_MAX_LENGTH, int((text_config or {}).get("max_position_embeddings", SIGLIP_MAX_LENGTH)))


def _structs(shapes: Mapping[str, tuple], batch: int, sharding) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct((batch, *s), d, sharding=sharding) for k, (s, d) in shapes.items()}


def image_batch(frozen: FrozenTowers, batch: int, sharding, labels: bool = True) -> dict:
    """An image batch of ``batch`` examples for ``frozen``'s towers (uint8 pictures, int32 question ids)."""
    out = {f"image/{n}": ((t.image_size, t.image_size, 3), jnp.uint8) for n, t in frozen.vision.items()}
    out["question_ids"] = ((question_length(frozen.text.kind, frozen.text.config),), jnp.int32)
    if labels:
        out.update(LABEL_SHAPES)
    return _structs(out, batch, sharding)


def feature_batch(vision_dim: int, text_shape: tuple[int, ...], batch: int, sharding) -> dict:
    """A batch of stored features: float32 vision [B, vision_dim] and text [B, *text_shape], and labels."""
    out = {"vision": ((vision_dim,), jnp.float32), "text": (tuple(text_shape), jnp.float32), **LABEL_SHAPES}
    return _structs(out, batch, sharding)


def frozen_feature_batch(frozen: FrozenTowers, batch: int, sharding) -> dict:
    """:func:`feature_batch` of ``frozen``'s towers."""
    tokens = frozen.text_output == "tokens"
    length = question_length(frozen.text.kind, frozen.text.config)
    return feature_batch(
        frozen.vision_dim, (length, frozen.text_dim) if tokens else (frozen.text_dim,), batch, sharding
    )


def variant_feature_batch(dims: tuple[int, int], variant: str, batch: int, sharding) -> dict:
    """:func:`feature_batch` of a variant whose towers' widths are ``dims`` ((vision_dim, text_dim), as
    ``variant_dims`` reads them; a token-state text output is BERT's, the only variant with one,
    ``MAX_QLEN`` long)."""
    spec = variants.get(variant)
    vision_dim, text_dim = dims
    text = (question_length(spec.text), text_dim) if spec.text_output == "tokens" else (text_dim,)
    return feature_batch(vision_dim, text, batch, sharding)
