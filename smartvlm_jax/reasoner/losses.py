"""Loss (SPEC section 6) and predictions, vectorised over puzzles (no Python loops, jit-able)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from smartvlm_jax.reasoner import config as config_lib


def per_sample_loss(logits: jax.Array, labels: jax.Array, puzzle_ids: jax.Array, cfg) -> jax.Array:
    """Cross-entropy of each sample: position 0 for ordinary puzzles, mean over K for sequence ones."""
    tab = config_lib.tables(cfg)
    pid = jnp.clip(puzzle_ids.astype(jnp.int32), 0, config_lib.NUM_ENCODER_SLOTS - 1)
    # Labels of padding samples may be anything; clip so the gather stays in range.
    labels = jnp.clip(labels.astype(jnp.int32), 0, logits.shape[-1] - 1)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [B, K]
    is_seq = jnp.asarray(tab.is_sequence_pid)[pid]
    return jnp.where(is_seq, ce.mean(axis=1), ce[:, 0])


def loss(
    logits: jax.Array,
    labels: jax.Array,
    puzzle_ids: jax.Array,
    cfg: ml_collections.ConfigDict,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Mean over the puzzles present of the mean loss of their samples (SPEC section 6).

    `mask` [B] marks real samples (False = padding, ignored); a puzzle is present if it has a real
    sample. Returns 0 for a batch with no real sample.
    """
    per = per_sample_loss(logits, labels, puzzle_ids, cfg)
    weight = jnp.ones_like(per) if mask is None else mask.astype(per.dtype)
    pid = jnp.clip(puzzle_ids.astype(jnp.int32), 0, config_lib.NUM_ENCODER_SLOTS - 1)
    n = config_lib.NUM_ENCODER_SLOTS
    total = jax.ops.segment_sum(per * weight, pid, num_segments=n)
    count = jax.ops.segment_sum(weight, pid, num_segments=n)
    present = count > 0
    per_puzzle = jnp.where(present, total / jnp.where(present, count, 1.0), 0.0)
    return per_puzzle.sum() / jnp.maximum(present.sum(), 1)


def predictions(logits: jax.Array, puzzle_ids: jax.Array, cfg: ml_collections.ConfigDict) -> jax.Array:
    """Argmax class per position, int32 [B, K]; for ordinary puzzles only position 0 is meaningful."""
    del puzzle_ids, cfg  # masked classes can never win the argmax, so no per-puzzle work is needed
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
