"""Reading stored features: read-only memmaps, a batch's rows asked of the kernel, pages given back.

A split's features are one ``.npy`` file per field; :func:`load_split` and :func:`load_memmap` map them
read-only (``np.load(mmap_mode="r")``): a batch reads its rows only, so a store larger than memory trains.
"""

from __future__ import annotations

import json
import mmap
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

DONE_FILE = "done.json"  # a finished split cache's marker: its rows and fields


def load_split(out_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """A finished split cache (its ``done.json``), in row order: one read-only ``np.memmap`` per field,
    nothing read yet (fields with rows of a page or more: see :func:`load_memmap`)."""
    out_dir = pathlib.Path(out_dir)
    fields = json.loads((out_dir / DONE_FILE).read_text())["fields"]
    return {key: load_memmap(out_dir / f"{key}.npy") for key in fields}


def load_memmap(path: pathlib.Path) -> np.ndarray:
    """``np.load(path, mmap_mode="r")``; an array whose rows span a page or more is mapped ``MADV_RANDOM``:
    a fault reads its page, not the device's read-ahead window, which is many token-state rows long
    (docs/training.md, the feature cache); :func:`read_rows` asks for exactly a batch's rows instead."""
    array = np.load(path, mmap_mode="r")
    if row_bytes(array) >= mmap.PAGESIZE:
        array._mmap.madvise(mmap.MADV_RANDOM)
    return array


def row_bytes(array: np.ndarray) -> int:
    """Bytes of one row (``array[i]``) of ``array``; 0 for a scalar."""
    return array.itemsize * int(np.prod(array.shape[1:])) if array.ndim else 0


def read_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]``; for a memmap with rows of a page or more, the kernel is first asked for exactly
    those rows' pages (``MADV_WILLNEED``, reads it issues at once), then they are copied out."""
    mapped = getattr(array, "_mmap", None)
    size = row_bytes(array)
    if mapped is not None and size >= mmap.PAGESIZE:
        base = array.offset % mmap.ALLOCATIONGRANULARITY  # where the data starts in the mapping
        for row in np.unique(rows):
            start = base + int(row) * size
            aligned = start - start % mmap.PAGESIZE
            mapped.madvise(mmap.MADV_WILLNEED, aligned, start + size - aligned)
    return array[rows]


def release(cache: Mapping[str, np.ndarray]) -> None:
    """Drop the pages of a cache's memmaps from this process's resident set (they stay in the page cache).

    Pages a memmap has read count in the process's RSS until the kernel reclaims them; a long epoch over a
    cache larger than memory would show an RSS as large as the cache while the anonymous memory stays
    small. ``MADV_DONTNEED`` unmaps them now; a later read faults them back in from the page cache or disk.
    """
    for array in cache.values():
        mapped = getattr(array, "_mmap", None)
        if mapped is not None:
            mapped.madvise(mmap.MADV_DONTNEED)


def release_all(cache: Mapping[str, np.ndarray | Sequence[np.ndarray]]) -> None:
    """:func:`release` of a run's split cache, whose "vision" is one column per tower."""
    release({f"{k}.{i}": a for k, v in cache.items() for i, a in enumerate(_as_list(v))})


def _as_list(value: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    return list(value) if isinstance(value, list | tuple) else [value]
