"""Which per-puzzle parameter rows a batch uses, so the optimiser can leave the others untouched.

In the reference every puzzle's image encoder and answer decoder is its own module; a batch runs only the
modules of the puzzles it holds, so PyTorch gives the others no gradient at all and AdamW skips them: no
moment update, no step count, no weight decay. Here those modules are rows of stacked parameters, and
this table says, leaf by leaf, which rows a batch touched (None: a shared leaf, always touched).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from smartvlm_jax.reasoner import config as config_lib

# Top-level parameter groups stacked per puzzle, and what indexes their leading axis.
_BY_PUZZLE_ID = ("im_encoder",)
_BY_ORDINARY_SLOT = ("ans_decoder_mlp",)
_BY_SEQUENCE_SLOT = ("ans_decoder_gru", "ans_decoder_lstm")


def row_presence(
    cfg: ml_collections.ConfigDict, params, puzzle_ids: jax.Array, mask: jax.Array | None = None
):
    """A tree like ``params``: bool [rows] for per-puzzle stacks (True where the batch has that puzzle among
    its valid samples), None for shared leaves. Jit-able."""
    tables = config_lib.tables(cfg)
    valid = jnp.ones(puzzle_ids.shape, bool) if mask is None else mask.astype(bool)
    present = jnp.zeros(config_lib.NUM_ENCODER_SLOTS, bool).at[puzzle_ids].max(valid)
    ordinary = present[jnp.asarray(tables.ordinary_ids, jnp.int32)] if tables.ordinary_ids else None
    sequence = present[jnp.asarray(tables.sequence_ids, jnp.int32)] if tables.sequence_ids else None

    def rows_of(group: str, leaf) -> jax.Array | None:
        if group in _BY_PUZZLE_ID and leaf.shape[0] == config_lib.NUM_ENCODER_SLOTS:
            return present  # a single shared image head (one row) is used by every batch
        if group in _BY_ORDINARY_SLOT:
            return ordinary
        if group in _BY_SEQUENCE_SLOT:
            return sequence
        return None

    return {group: jax.tree.map(lambda leaf, g=group: rows_of(g, leaf), sub) for group, sub in params.items()}
