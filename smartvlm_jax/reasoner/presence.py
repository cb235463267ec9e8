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
import numpy as np

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


def encoder_rows(cfg: ml_collections.ConfigDict) -> tuple[int, ...] | None:
    """The rows of the ``im_encoder`` stack that a run of ``cfg`` can ever train: its puzzle ids, sorted.

    None where that is no saving: a single shared image head, or a run of (nearly) every puzzle. With the
    row-sparse optimiser the other rows never change, so a train step may work on these rows alone
    (:func:`take_encoder_rows`, ``PuzzleHead.encoder_rows``) and put them back (:func:`put_encoder_rows`).
    """
    rows = tuple(sorted(set(int(p) for p in cfg.puzzle_ids)))
    if cfg.use_single_image_head or 2 * len(rows) > config_lib.NUM_ENCODER_SLOTS:
        return None
    return rows


def _is_encoder_leaf(path, leaf) -> bool:
    """A leaf of the per-puzzle-id stack, in params or in anything shaped like them (moments, masks)."""
    in_encoder = any(getattr(key, "key", None) in _BY_PUZZLE_ID for key in path)
    return in_encoder and jnp.ndim(leaf) >= 1 and jnp.shape(leaf)[0] == config_lib.NUM_ENCODER_SLOTS


def take_encoder_rows(tree, rows: tuple[int, ...]):
    """``tree`` (params, a train state, row masks: anything holding ``im_encoder`` leaves with the full
    [102, ...] rows) with those leaves cut to ``rows`` (static, sorted puzzle ids) -> [len(rows), ...];
    the other leaves as they are. Jit- and vmap-able (under ``jax.vmap`` the rows stay behind the
    member axis).

    One gather per leaf: slicing each run of consecutive ids apart made one program fusion per run and
    leaf, a quarter of the smoke head's train step (issue 30)."""
    index = np.asarray(rows, np.int32)

    def take(path, leaf):
        if not _is_encoder_leaf(path, leaf):
            return leaf
        return jnp.take(leaf, index, axis=0, indices_are_sorted=True, unique_indices=True, mode="clip")

    return jax.tree_util.tree_map_with_path(take, tree)


def put_encoder_rows(full, part, rows: tuple[int, ...]):
    """Inverse of :func:`take_encoder_rows`: ``part``'s leaves, with the ``im_encoder`` ones written into
    ``full``'s [102, ...] leaves at ``rows`` (the rows in between keep ``full``'s values; one scatter per
    leaf, in place where ``full`` is donated)."""
    index = np.asarray(rows, np.int32)

    def put(path, whole, cut):
        if not _is_encoder_leaf(path, whole):
            return cut
        return whole.at[index].set(
            cut, indices_are_sorted=True, unique_indices=True, mode="promise_in_bounds"
        )

    return jax.tree_util.tree_map_with_path(put, full, part)
