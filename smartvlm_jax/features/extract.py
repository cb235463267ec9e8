"""Extraction: the towers run over a split's batches and their outputs are written row by row to disk.

One ``.npy`` file per field (``vision.<tower>``, ``text``, the label fields; float features in ``float32`` or
``float16``) is written through a memmap in the split's row order, with a marker file per ``shard_batches``
batches of the deterministic, unshuffled pipeline, so a killed extraction resumes at its first missing
shard. Nothing holds more than a shard of the split in memory.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from smartvlm_jax import console, fileio
from smartvlm_jax.features.columns import FrozenTowers
from smartvlm_jax.features.memmap import DONE_FILE, load_split

log = logging.getLogger(__name__)

T = TypeVar("T")

# Per-example fields that travel with the features, so evaluation needs no image decoding.
LABEL_FIELDS = ("labels", "puzzle_ids", "instance_ids", "option_values", "answer_index")

# Storage dtypes of the cached float features (``config.feature_dtype``).
STORAGE_DTYPES = ("float32", "float16")


def host_value(x: jax.Array) -> np.ndarray:
    """The full value of a (possibly multi-process) global array on this host."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def prefetch(items: Iterable[T], size: int = 2) -> Iterator[T]:
    """Yields ``items`` in order while a background thread produces up to ``size`` of them ahead.

    Decoding and resizing a batch (PIL, grain) then runs while XLA computes the previous one: both release
    the GIL for their heavy work. An exception of the producer is re-raised here; leaving the loop early
    stops the producer at its next item.
    """
    buffer: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    end = object()

    def put(entry: tuple) -> bool:
        """Waits for room unless the consumer has left; whether the entry was queued."""
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((end, None))
        except BaseException as e:  # handed to the consumer, which raises it
            put((end, e))

    thread = threading.Thread(target=produce, name="feature-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()


def extract_split(
    towers: FrozenTowers,
    batches: Iterable[Mapping[str, np.ndarray]] | Callable[..., Iterable[Mapping[str, np.ndarray]]],
    to_global: Callable[[Mapping[str, np.ndarray]], Mapping[str, jax.Array]],
    row_position: Callable[[np.ndarray, np.ndarray], np.ndarray],
    num_rows: int,
    out_dir: str | os.PathLike,
    shard_batches: int = 16,
    params_sharding=None,
    storage_dtype: str = "float32",
    name: str | None = None,
) -> dict[str, np.ndarray]:
    """Run the towers over one split's batches and cache the features; return the cache as memmaps.

    ``batches`` is the split's unshuffled pipeline (last batch padded, ``mask`` False on padding);
    ``row_position(puzzle_ids, instance_ids)`` maps examples to their row in the split, so the cache is in
    row order whatever order the processes' shards arrive in. Each batch's rows go straight to their rows
    of one ``.npy`` file per field (``<field>.partial.npy``, a memmap; float features as ``storage_dtype``);
    every ``shard_batches`` batches the files are flushed and a marker ``shard_<k>.npy`` (the row positions
    it wrote) is written atomically. A killed extraction resumes at its first missing marker: when
    ``batches`` is a callable, ``batches(start_batch=n)`` is asked for the batches from there on, so it does
    not decode what it already holds. At the end every row must have been written exactly once; the files
    are renamed to ``<field>.npy``, ``done.json`` is written and the markers removed. Nothing here holds
    more than a shard of the split in memory, and no second copy of the cache is ever written.

    Streaming: batches are decoded ahead by :func:`prefetch`, and batch i + 1 is dispatched to the device
    before batch i's features are copied back to the host, so decoding, the towers' compute and the host
    copy overlap. The jitted function sees one batch shape (the pipeline pads the last batch), so it
    compiles once. Progress (``console.Progress`` on process 0, "features <split>"): samples/s and ETA after
    the first batch, which compiles.
    """
    out_dir = pathlib.Path(out_dir)
    if is_complete(out_dir):
        return load_split(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = towers.params()
    if params_sharding is not None:
        params = jax.device_put(params, params_sharding)
    name = name or out_dir.name
    lead = jax.process_index() == 0
    writer = RowWriter(out_dir, num_rows, np.dtype(storage_dtype))
    start, done = 0, 0  # the first batch to extract, which compiles: its time is left out of the rate
    if callable(batches):
        start, done = _resume_point(out_dir, shard_batches)
        batches = batches(start_batch=start)
    if start:
        log.info("features %s: resuming at batch %d (%d done)", name, start, done)
    progress = console.Progress(  # the ETA counts what the markers on disk hold as done
        f"features {name}", num_rows, "samples", initial=done, warmup_name="on the first batch", enabled=lead
    )
    pending: list[np.ndarray] = []  # row positions written since the last marker

    def finish(index: int, gbatch: Mapping[str, jax.Array], outputs: Mapping[str, jax.Array]) -> None:
        positions, rows = _host_rows(gbatch, outputs, row_position)
        writer.write(positions, rows)
        pending.append(positions)
        if (index + 1) % shard_batches == 0:
            writer.mark(index // shard_batches, pending)
            pending.clear()
        progress.update(len(positions), warmup=index == start)

    in_flight = None
    last = start - 1
    for i, batch in enumerate(prefetch(batches), start=start):
        last = i
        if marker_path(out_dir, i // shard_batches).exists():
            continue  # resumed: this part was extracted before the kill
        gbatch = to_global(batch)
        launched = (i, gbatch, towers.jitted_columns(params, gbatch))  # dispatch returns before the compute
        if in_flight is not None:
            finish(*in_flight)
        in_flight = launched
    if in_flight is not None:
        finish(*in_flight)
    if pending:
        writer.mark(last // shard_batches, pending)
    progress.close()
    _finalize_everywhere(writer, out_dir)
    return load_split(out_dir)


def _finalize_everywhere(writer: RowWriter, out_dir: pathlib.Path) -> None:
    """Process 0 finalizes the cache once every process has handed over its rows; all wait for it."""
    multihost_utils.sync_global_devices(f"features {out_dir}")
    if writer.enabled:
        writer.finalize()
    multihost_utils.sync_global_devices(f"features done {out_dir}")


def _resume_point(out_dir: pathlib.Path, shard_batches: int) -> tuple[int, int]:
    """(the first batch of the first shard without a marker, the rows the markers before it hold)."""
    shard = 0
    while marker_path(out_dir, shard).exists():
        shard += 1
    return shard * shard_batches, sum(len(np.load(marker_path(out_dir, k))) for k in range(shard))


def _host_rows(
    gbatch: Mapping[str, jax.Array],
    outputs: Mapping[str, jax.Array],
    row_position: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(int64 row positions, field -> rows) of a batch's real examples (``mask``), on this host."""
    rows = {k: host_value(v) for k, v in outputs.items()}
    rows.update({k: host_value(gbatch[k]) for k in (*LABEL_FIELDS, "mask")})
    keep = rows.pop("mask").astype(bool)
    rows = {k: v[keep] for k, v in rows.items()}
    return np.asarray(row_position(rows["puzzle_ids"], rows["instance_ids"]), np.int64), rows


def is_complete(out_dir: str | os.PathLike) -> bool:
    """Whether ``out_dir`` holds a finished split cache (its ``done.json``; :func:`load_split` reads it)."""
    return (pathlib.Path(out_dir) / DONE_FILE).exists()


def marker_path(out_dir: pathlib.Path, shard: int) -> pathlib.Path:
    """``<out_dir>/shard_<k>.npy``: shard k's row positions, there once its rows are on disk."""
    return out_dir / f"shard_{shard:05d}.npy"


class RowWriter:
    """Writes rows of a split into one ``<field>.partial.npy`` memmap per field (on process 0 only).

    ``storage_dtype`` (one of ``STORAGE_DTYPES``, else ValueError) is the dtype of float fields; others
    keep theirs. A ``.partial.npy`` left by a killed run is opened again (RuntimeError naming the file when
    its shape or dtype differ from this run's).
    """

    def __init__(self, out_dir: pathlib.Path, num_rows: int, storage_dtype: np.dtype) -> None:
        if storage_dtype.name not in STORAGE_DTYPES:
            raise ValueError(f"feature storage dtype {storage_dtype} is not one of {STORAGE_DTYPES}")
        self.out_dir, self.num_rows, self.storage_dtype = out_dir, num_rows, storage_dtype
        self.files: dict[str, np.memmap] = {}
        self.enabled = jax.process_index() == 0  # every process holds the gathered rows; one writes them

    def _open(self, key: str, value: np.ndarray) -> np.memmap:
        dtype = self.storage_dtype if np.issubdtype(value.dtype, np.floating) else value.dtype
        shape = (self.num_rows, *value.shape[1:])
        path = self.out_dir / f"{key}.partial.npy"
        if path.exists():  # resumed: the rows of the shards marked done are in it already
            array = np.lib.format.open_memmap(path, mode="r+")
            if array.shape != shape or array.dtype != dtype:
                raise RuntimeError(
                    f"feature cache {path} holds {array.dtype}{list(array.shape)}, this run writes "
                    f"{dtype}{list(shape)} (another config.feature_dtype or towers?): remove {self.out_dir}"
                )
            return array
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)

    def write(self, positions: np.ndarray, rows: Mapping[str, np.ndarray]) -> None:
        """Write ``rows`` (field -> [n, ...]) at rows ``positions`` (int [n]) of each field's file."""
        if not self.enabled:
            return
        for key, value in rows.items():
            if key not in self.files:
                self.files[key] = self._open(key, value)
            self.files[key][positions] = value

    def mark(self, shard: int, positions: list[np.ndarray]) -> None:
        """The rows written so far are on disk; then the shard's marker (its row positions) appears."""
        if not self.enabled:
            return
        for array in self.files.values():
            array.flush()
        with fileio.atomic_open(marker_path(self.out_dir, shard), "wb") as f:
            np.save(f, np.concatenate(positions))  # either whole or absent

    def finalize(self) -> None:
        """Check every row was written once, then rename the files into place and drop the markers."""
        markers = sorted(self.out_dir.glob("shard_*.npy"))
        written = np.concatenate([np.load(m) for m in markers]) if markers else np.zeros(0, np.int64)
        if len(written) != self.num_rows or not np.array_equal(np.sort(written), np.arange(self.num_rows)):
            raise RuntimeError(
                f"feature cache {self.out_dir} does not hold each of the {self.num_rows} rows exactly once"
            )
        for array in self.files.values():
            array.flush()
        self.files.clear()
        for partial in self.out_dir.glob("*.partial.npy"):
            os.replace(partial, self.out_dir / partial.name.replace(".partial.npy", ".npy"))
        # (a kill between two renames leaves some fields renamed already: they count too)
        fields = sorted(p.stem for p in self.out_dir.glob("*.npy") if not p.name.startswith("shard_"))
        fileio.write_text(self.out_dir / DONE_FILE, json.dumps({"rows": self.num_rows, "fields": fields}))
        for marker in markers:
            marker.unlink()
