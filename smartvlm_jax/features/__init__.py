"""Frozen-tower features: computed once per split's rows and towers, kept in a store runs share.

Which towers a run uses is a variant (``config.model.variant``): its vision towers (mean-pooled and
concatenated) and its text tower, whose output is either pooled (SMARTER: the mean over all positions,
[B, D]) or the token states (the SMART baseline: BERT states zeroed beyond the question, [B, L, D]).

The towers never change during training, so the features of an instance never change either. Each tower's
output over a split is a column of the feature store (``config.feature_store``, docs/training.md): one
``.npy`` per column in the entry of the split's rows, keyed by the rows and the tower's files, so every run
and every epoch that needs it reads it and only a missing column is extracted. Rows are stored in the
split's row order, the order the reader gives, and read through read-only memmaps: a batch reads its rows
only, so a store larger than memory trains.

- :mod:`~smartvlm_jax.features.columns`: :class:`FrozenTowers` (the towers' pure feature functions),
  :class:`Column` and a variant's columns and widths.
- :mod:`~smartvlm_jax.features.extract`: :func:`extract_split`, the towers over a split's batches written
  row by row (:class:`RowWriter`), resumable shard by shard.
- :mod:`~smartvlm_jax.features.store`: the store's entries (:class:`SplitPlan`, :func:`fill_split` under
  the entry's lock) and a run's ``features.json``.
- :mod:`~smartvlm_jax.features.memmap`: reading what is stored (:func:`load_split`, :func:`read_rows`,
  :func:`release`).
"""

from smartvlm_jax.features.columns import (
    FORMAT_VERSION,
    TEXT_FIELD,
    Column,
    FrozenTowers,
    load_text_tower,
    load_towers,
    no_question_ids,
    tower_dir,
    variant_columns,
    variant_dims,
    vision_field,
)
from smartvlm_jax.features.extract import (
    LABEL_FIELDS,
    STORAGE_DTYPES,
    RowWriter,
    extract_split,
    host_value,
    is_complete,
    marker_path,
    prefetch,
)
from smartvlm_jax.features.memmap import (
    DONE_FILE,
    load_memmap,
    load_split,
    read_rows,
    release,
    release_all,
    row_bytes,
)
from smartvlm_jax.features.store import (
    LABELS_DONE,
    LOCK_FILE,
    RECORD_FILE,
    SplitPlan,
    fill_split,
    locked,
    missing_everywhere,
    plan_split,
    read_recorded,
    write_record,
)

__all__ = [
    "DONE_FILE",
    "FORMAT_VERSION",
    "LABELS_DONE",
    "LABEL_FIELDS",
    "LOCK_FILE",
    "RECORD_FILE",
    "STORAGE_DTYPES",
    "TEXT_FIELD",
    "Column",
    "FrozenTowers",
    "RowWriter",
    "SplitPlan",
    "extract_split",
    "fill_split",
    "host_value",
    "is_complete",
    "load_memmap",
    "load_split",
    "load_text_tower",
    "load_towers",
    "locked",
    "marker_path",
    "missing_everywhere",
    "no_question_ids",
    "plan_split",
    "prefetch",
    "read_recorded",
    "read_rows",
    "release",
    "release_all",
    "row_bytes",
    "tower_dir",
    "variant_columns",
    "variant_dims",
    "vision_field",
    "write_record",
]
