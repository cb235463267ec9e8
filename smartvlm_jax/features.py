"""Frozen-tower features: computed once per instance, cached in the workdir, reused by every epoch.

Which towers a run uses is a variant (``config.model.features``): its vision towers (mean-pooled and
concatenated) and its text tower, whose output is either pooled (SMARTER: the mean over all positions,
[B, D]) or the token states (the SMART baseline: BERT states zeroed beyond the question, [B, L, D]).

The towers never change during training, so the features of an instance never change either. The
trainer extracts them split by split into ``<workdir>/features/<split>/`` as one ``.npy`` file per field
(``vision.npy``, ``text.npy``, ``labels.npy``, ...; float features in ``float32`` or ``float16``), written
row by row through a memmap, with a marker file per ``shard_batches`` batches of the deterministic,
unshuffled pipeline, so a killed extraction resumes at its first missing shard. Rows are stored in the
split's row order, the order the reader gives. :func:`load_split` maps the files read-only
(``np.load(mmap_mode="r")``): a batch reads its rows only, so a cache larger than memory trains.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import mmap
import os
import pathlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from smartvlm_jax import console, variants
from smartvlm_jax import towers as towers_lib

log = logging.getLogger(__name__)

T = TypeVar("T")

# Per-example fields that travel with the features, so evaluation needs no image decoding.
LABEL_FIELDS = ("labels", "puzzle_ids", "instance_ids", "option_values", "answer_index")


# Storage dtypes of the cached float features (``config.feature_dtype``); and a finished split's marker.
STORAGE_DTYPES = ("float32", "float16")
DONE_FILE = "done.json"


@dataclasses.dataclass(frozen=True)
class FrozenTowers:
    """The vision towers of a feature variant and the text tower, with a pure feature function."""

    vision: Mapping[str, object]  # name -> towers.load(..., part="vision")
    text: object  # towers.load(..., part="text")
    text_output: str = "mean"  # "mean": pooled [B, D]; "tokens": question token states [B, L, D]

    def __post_init__(self) -> None:
        if self.text_output not in variants.TEXT_OUTPUTS:
            raise ValueError(f"text_output={self.text_output!r} is not one of {variants.TEXT_OUTPUTS}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.vision)

    @property
    def vision_dim(self) -> int:
        return sum(t.hidden_size for t in self.vision.values())

    @property
    def text_dim(self) -> int:
        return self.text.hidden_size

    def preprocessors(self) -> dict[str, Callable]:
        """Picklable per-image resizers for the data pipeline, keyed like the batch's ``image/<name>``."""
        return {name: tower.resizer for name, tower in self.vision.items()}

    @property
    def compiler_options(self) -> dict | None:
        """XLA options for jitting a function that runs these towers: theirs if they all agree, else None."""
        options = [t.compiler_options for t in (*self.vision.values(), self.text)]
        return options[0] if all(o == options[0] for o in options) else None

    @functools.cached_property
    def jitted_features(self) -> Callable:
        """:meth:`features` jitted once for these towers (with their compiler options): every split's
        extraction shares one compilation per batch shape."""
        return jax.jit(self.features, compiler_options=self.compiler_options)

    def params(self, pack: bool | None = None) -> dict:
        """The towers' parameters for :meth:`features`: their ``ready_params``, or with ``pack`` given
        ``prepared(pack)`` (False: XLA's dots everywhere, e.g. for XLA's FLOP count)."""
        get = (lambda t: t.ready_params) if pack is None else (lambda t: t.prepared(pack))
        return {"vision": {n: get(t) for n, t in self.vision.items()}, "text": get(self.text)}

    def features(self, params: Mapping, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """Pure: (vision [B, sum D], text) from a batch of uint8 images and question ids.

        Vision: the mean over all tokens of each tower's last_hidden_state, concatenated (SPEC 5.1; for
        ResNet-50 the global average pool). Text, ``text_output="mean"``: the mean over all positions,
        padding included, [B, D] (SPEC 4); ``"tokens"``: last_hidden_state [B, L, D] with the positions
        beyond the question (pad ids) zeroed, as the baseline's reference copies BERT's states of the
        unpadded question into a zero buffer (the same as ``reasoner.baseline.question_states``).
        """
        pooled = []
        for name, tower in self.vision.items():
            pixels = tower.normalize(batch[f"image/{name}"])
            hidden = tower.apply(params["vision"][name], pixels)
            pooled.append(jnp.mean(hidden.astype(jnp.float32), axis=1))
        ids = batch["question_ids"]
        text = self.text.apply(params["text"], ids).astype(jnp.float32)
        if self.text_output == "tokens":
            real = ids != int(self.text.config.get("pad_token_id") or 0)  # BERT's own attention mask
            return jnp.concatenate(pooled, axis=-1), jnp.where(real[..., None], text, 0.0)
        return jnp.concatenate(pooled, axis=-1), jnp.mean(text, axis=1)


def load_towers(towers_cfg: ml_collections.ConfigDict, variant: str) -> FrozenTowers:
    """Load the towers a feature variant needs from the local directories named in ``config.towers``."""
    spec = variants.get(variant)
    load = functools.partial(
        towers_lib.load, dtype=towers_cfg.dtype, cpu_onednn=bool(towers_cfg.get("cpu_onednn", True))
    )
    vision = {
        name: load(_tower_dir(towers_cfg, name), part="vision") for name in spec.vision
    }
    text = load_text_tower(_tower_dir(towers_cfg, spec.text), load)
    return FrozenTowers(vision=vision, text=text, text_output=spec.text_output)


def load_text_tower(path: str, load: Callable = towers_lib.load) -> object:
    """The text part of the tower in ``path``, which must come with its tokenizer (the questions are fed
    through it); ValueError naming the directory otherwise."""
    text = load(path, part="text")
    if text.tokenizer is None:
        raise ValueError(
            f"{path} has a {text.kind} text tower but no tokenizer (SigLIP: spiece.model; BERT: "
            "tokenizer.json or vocab.txt): copy the tokenizer files of its release next to config.json"
        )
    return text


def _tower_dir(towers_cfg: ml_collections.ConfigDict, name: str) -> str:
    path = towers_cfg.get(name, "")  # a config.json written before the baseline towers has no resnet/bert
    if not path or not os.path.isdir(path):
        raise FileNotFoundError(f"--config.towers.{name}={path!r} is not a directory")
    return path


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
    forward = towers.jitted_features
    lead = jax.process_index() == 0
    progress = console.Progress(
        f"features {out_dir.name}", num_rows, "samples", warmup_name="on the first batch", enabled=lead
    )
    writer = _RowWriter(out_dir, num_rows, np.dtype(storage_dtype))
    pending: list[np.ndarray] = []  # row positions written since the last marker

    def finish(index: int, gbatch: Mapping[str, jax.Array], vision: jax.Array, text: jax.Array) -> None:
        rows = {"vision": host_value(vision), "text": host_value(text)}
        rows.update({k: host_value(gbatch[k]) for k in (*LABEL_FIELDS, "mask")})
        keep = rows.pop("mask").astype(bool)
        rows = {k: v[keep] for k, v in rows.items()}
        positions = np.asarray(row_position(rows["puzzle_ids"], rows["instance_ids"]), np.int64)
        writer.write(positions, rows)
        pending.append(positions)
        if (index + 1) % shard_batches == 0:
            writer.mark(index // shard_batches, pending)
            pending.clear()
        progress.update(len(positions), warmup=index == first)

    start = 0
    if callable(batches):
        while _marker(out_dir, start).exists():
            start += 1
        # the ETA counts what the markers on disk hold as done
        done = sum(len(np.load(_marker(out_dir, k))) for k in range(start))
        progress.update(done, warmup=True)
        start *= shard_batches
        if start:
            log.info("features %s: resuming at batch %d (%d done)", out_dir.name, start, done)
        batches = batches(start_batch=start)
    first = start  # the batch that compiles: its time is left out of the rate
    in_flight = None
    last = start - 1
    for i, batch in enumerate(prefetch(batches), start=start):
        last = i
        if _marker(out_dir, i // shard_batches).exists():
            continue  # resumed: this part was extracted before the kill
        gbatch = to_global(batch)
        launched = (i, gbatch, *forward(params, gbatch))  # dispatch returns before the compute ends
        if in_flight is not None:
            finish(*in_flight)
        in_flight = launched
    if in_flight is not None:
        finish(*in_flight)
    if pending:
        writer.mark(last // shard_batches, pending)
    progress.close()
    multihost_utils.sync_global_devices(f"features {out_dir}")
    if jax.process_index() == 0:
        writer.finalize()
    multihost_utils.sync_global_devices(f"features done {out_dir}")
    return load_split(out_dir)


def is_complete(out_dir: str | os.PathLike) -> bool:
    """Whether ``out_dir`` holds a finished split cache (its ``done.json``; :func:`load_split` reads it)."""
    return (pathlib.Path(out_dir) / DONE_FILE).exists()


def _marker(out_dir: pathlib.Path, shard: int) -> pathlib.Path:
    return out_dir / f"shard_{shard:05d}.npy"


def _atomic_save(path: pathlib.Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)  # either whole or absent


class _RowWriter:
    """Writes rows of a split into one ``<field>.partial.npy`` memmap per field (on process 0 only)."""

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
        _atomic_save(_marker(self.out_dir, shard), np.concatenate(positions))

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
        done = {"rows": self.num_rows, "fields": fields}
        (self.out_dir / f"{DONE_FILE}.tmp").write_text(json.dumps(done))
        os.replace(self.out_dir / f"{DONE_FILE}.tmp", self.out_dir / DONE_FILE)
        for marker in markers:
            marker.unlink()


def load_split(out_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """A finished split cache, in row order: one read-only ``np.memmap`` per field, nothing read yet.

    Fields whose rows span a page or more are mapped ``MADV_RANDOM``: a fault reads its page, not the
    device's read-ahead window (8 MiB here, 24x a 338 KB token-state row); :func:`read_rows` asks for
    exactly a batch's rows instead.
    """
    out_dir = pathlib.Path(out_dir)
    fields = json.loads((out_dir / DONE_FILE).read_text())["fields"]
    cache = {key: np.load(out_dir / f"{key}.npy", mmap_mode="r") for key in fields}
    for array in cache.values():
        if _row_bytes(array) >= mmap.PAGESIZE:
            array._mmap.madvise(mmap.MADV_RANDOM)
    return cache


def _row_bytes(array: np.ndarray) -> int:
    return array.itemsize * int(np.prod(array.shape[1:])) if array.ndim else 0


def read_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]``; for a memmap with rows of a page or more, the kernel is first asked for exactly
    those rows' pages (``MADV_WILLNEED``, reads it issues at once), then they are copied out."""
    mapped = getattr(array, "_mmap", None)
    row_bytes = _row_bytes(array)
    if mapped is not None and row_bytes >= mmap.PAGESIZE:
        base = array.offset % mmap.ALLOCATIONGRANULARITY  # where the data starts in the mapping
        for row in np.unique(rows):
            start = base + int(row) * row_bytes
            aligned = start - start % mmap.PAGESIZE
            mapped.madvise(mmap.MADV_WILLNEED, aligned, start + row_bytes - aligned)
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
