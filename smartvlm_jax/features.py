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

import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import mmap
import os
import pathlib
import queue
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TypeVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from smartvlm_jax import console, hashing, variants
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
    """Vision towers of a feature variant (all, or those whose columns a store lacks) and its text tower
    (None when only vision columns are extracted), with pure feature functions."""

    vision: Mapping[str, object]  # name -> towers.load(..., part="vision"), in concatenation order
    text: object | None  # towers.load(..., part="text"); None: no text column to compute
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
    def tokenizer(self) -> Callable[[list[str]], np.ndarray]:
        """The text tower's tokenizer for the pipeline; without a text tower, :func:`no_question_ids`."""
        return no_question_ids if self.text is None else self.text.tokenizer

    def _towers(self) -> list:
        return [*self.vision.values(), *([] if self.text is None else [self.text])]

    @property
    def compiler_options(self) -> dict | None:
        """XLA options for jitting a function that runs these towers: theirs if they all agree, else None."""
        options = [t.compiler_options for t in self._towers()]
        return options[0] if all(o == options[0] for o in options) else None

    @functools.cached_property
    def jitted_features(self) -> Callable:
        """:meth:`features` jitted once for these towers (with their compiler options)."""
        return jax.jit(self.features, compiler_options=self.compiler_options)

    @functools.cached_property
    def jitted_columns(self) -> Callable:
        """:meth:`columns` jitted once for these towers (with their compiler options): every split's
        extraction shares one compilation per batch shape."""
        return jax.jit(self.columns, compiler_options=self.compiler_options)

    def params(self, pack: bool | None = None) -> dict:
        """The towers' parameters for :meth:`features`: their ``ready_params``, or with ``pack`` given
        ``prepared(pack)`` (False: XLA's dots everywhere, e.g. for XLA's FLOP count)."""
        get = (lambda t: t.ready_params) if pack is None else (lambda t: t.prepared(pack))
        text = {} if self.text is None else {"text": get(self.text)}
        return {"vision": {n: get(t) for n, t in self.vision.items()}, **text}

    def columns(self, params: Mapping, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Pure: each tower's output from a batch of uint8 images and question ids, float32.

        ``"vision.<name>"`` [B, D_name] per vision tower: the mean over all tokens of its
        last_hidden_state (SPEC 5.1; for ResNet-50 the global average pool). ``"text"`` (when there is a
        text tower), ``text_output="mean"``: the mean over all positions, padding included, [B, D] (SPEC
        4); ``"tokens"``: last_hidden_state [B, L, D] with the positions beyond the question (pad ids)
        zeroed, as the baseline's reference copies BERT's states of the unpadded question into a zero
        buffer (the same as ``reasoner.baseline.question_states``).
        """
        out = {}
        for name, tower in self.vision.items():
            pixels = tower.normalize(batch[f"image/{name}"])
            hidden = tower.apply(params["vision"][name], pixels)
            out[vision_field(name)] = jnp.mean(hidden.astype(jnp.float32), axis=1)
        if self.text is not None:
            ids = batch["question_ids"]
            text = self.text.apply(params["text"], ids).astype(jnp.float32)
            if self.text_output == "tokens":
                real = ids != int(self.text.config.get("pad_token_id") or 0)  # BERT's own attention mask
                out[TEXT_FIELD] = jnp.where(real[..., None], text, 0.0)
            else:
                out[TEXT_FIELD] = jnp.mean(text, axis=1)
        return out

    def features(self, params: Mapping, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """Pure: (vision [B, sum D], text) as the head takes them: :meth:`columns`, the vision towers'
        concatenated in their order (the variant's)."""
        out = self.columns(params, batch)
        return jnp.concatenate([out[vision_field(n)] for n in self.vision], axis=-1), out[TEXT_FIELD]


TEXT_FIELD = "text"


def vision_field(name: str) -> str:
    """The field of a vision tower's pooled features in :meth:`FrozenTowers.columns` ("vision.dinov2")."""
    return f"vision.{name}"


def no_question_ids(questions: list[str]) -> np.ndarray:
    """The pipeline's tokenizer when no text column is extracted: int32 [B, 1] zeros (picklable)."""
    return np.zeros((len(questions), 1), np.int32)


def load_towers(
    towers_cfg: ml_collections.ConfigDict,
    variant: str,
    vision: Iterable[str] | None = None,
    text: bool = True,
) -> FrozenTowers:
    """Load the towers a feature variant needs from the local directories named in ``config.towers``:
    all of them, or the vision towers named in ``vision`` (in the variant's order) and the text tower if
    ``text``."""
    spec = variants.get(variant)
    wanted = set(spec.vision if vision is None else vision)
    load = functools.partial(
        towers_lib.load, dtype=towers_cfg.dtype, cpu_onednn=bool(towers_cfg.get("cpu_onednn", True))
    )
    vision_towers = {
        name: load(_tower_dir(towers_cfg, name), part="vision") for name in spec.vision if name in wanted
    }
    text_tower = load_text_tower(_tower_dir(towers_cfg, spec.text), load) if text else None
    return FrozenTowers(vision=vision_towers, text=text_tower, text_output=spec.text_output)


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
    forward = towers.jitted_columns
    lead = jax.process_index() == 0
    progress = console.Progress(
        f"features {name or out_dir.name}", num_rows, "samples", warmup_name="on the first batch",
        enabled=lead,
    )
    writer = _RowWriter(out_dir, num_rows, np.dtype(storage_dtype))
    pending: list[np.ndarray] = []  # row positions written since the last marker

    def finish(index: int, gbatch: Mapping[str, jax.Array], outputs: Mapping[str, jax.Array]) -> None:
        rows = {k: host_value(v) for k, v in outputs.items()}
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
            log.info("features %s: resuming at batch %d (%d done)", name or out_dir.name, start, done)
        batches = batches(start_batch=start)
    first = start  # the batch that compiles: its time is left out of the rate
    in_flight = None
    last = start - 1
    for i, batch in enumerate(prefetch(batches), start=start):
        last = i
        if _marker(out_dir, i // shard_batches).exists():
            continue  # resumed: this part was extracted before the kill
        gbatch = to_global(batch)
        launched = (i, gbatch, forward(params, gbatch))  # dispatch returns before the compute ends
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


# ----------------------------------------------------------------------------------------------------
# The feature store: columns shared between runs, keyed by what determines them.

FORMAT_VERSION = 1  # bump when the code computes other values from the same towers and rows
LABELS_DONE = "labels.json"  # an entry's label fields are complete (written after them)
LOCK_FILE = "lock"
RECORD_FILE = "features.json"  # in the workdir: the store entries and columns a run read


def _array(value: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    return list(value) if isinstance(value, list | tuple) else [value]


def release_all(cache: Mapping[str, np.ndarray | Sequence[np.ndarray]]) -> None:
    """:func:`release` of a run's split cache, whose "vision" is one column per tower."""
    release({f"{k}.{i}": a for k, v in cache.items() for i, a in enumerate(_array(v))})


@dataclasses.dataclass(frozen=True)
class Column:
    """One tower's output over a split, stored as ``<entry>/<name>.npy`` beside ``<name>.json`` (what its
    key covers). ``field`` is its name in :meth:`FrozenTowers.columns` ("vision.dinov2", "text")."""

    field: str
    tower: str  # the config.towers name
    inputs: Mapping[str, object]  # what determines it: tower digest, dtypes, preprocessing, format

    @property
    def key(self) -> str:
        return hashing.digest_json(dict(self.inputs))

    @property
    def name(self) -> str:
        """``vision-dinov2-<key16>``, ``text-siglip-mean-<key16>``."""
        if self.field == TEXT_FIELD:
            kind = f"text-{self.tower}-{self.inputs['text_output']}"
        else:
            kind = f"vision-{self.tower}"
        return f"{kind}-{self.key[:16]}"


def variant_columns(
    towers_cfg: ml_collections.ConfigDict,
    variant: str,
    *,
    storage_dtype: str,
    image_side: int,
    memo_dir: str | os.PathLike | None = None,
) -> tuple[tuple[Column, ...], Column]:
    """(vision columns in the variant's tower order, text column) of a variant; reads no weights.

    A column's key covers the content digest of its tower's directory (``towers.content_digest``: every
    file, weights, config and tokenizer/processor files), the part and text output, the towers' dtype,
    the storage dtype, the image side the pipeline resizes to before the tower's own resize (vision) and
    ``FORMAT_VERSION``. ``memo_dir`` remembers large files' digests. FileNotFoundError naming the
    ``--config.towers.<name>`` field of a missing directory.
    """
    spec = variants.get(variant)
    digests = {
        name: towers_lib.content_digest(_tower_dir(towers_cfg, name), memo_dir) for name in spec.towers
    }
    common = {"format": FORMAT_VERSION, "towers_dtype": towers_cfg.dtype, "storage_dtype": storage_dtype}
    vision = tuple(
        Column(vision_field(name), name,
               {**common, "part": "vision", "tower": digests[name], "image_side": int(image_side)})
        for name in spec.vision
    )  # fmt: skip
    text_inputs = {**common, "part": "text", "tower": digests[spec.text], "text_output": spec.text_output}
    text = Column(TEXT_FIELD, spec.text, text_inputs)
    return vision, text


def variant_dims(towers_cfg: ml_collections.ConfigDict, variant: str) -> tuple[int, int]:
    """(vision_dim, text_dim) of a variant's towers, from their config files alone (no weights read)."""
    spec = variants.get(variant)
    vision = sum(towers_lib.hidden_size(_tower_dir(towers_cfg, n), "vision") for n in spec.vision)
    return vision, towers_lib.hidden_size(_tower_dir(towers_cfg, spec.text), "text")


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """The store entry of one split's rows and the columns a variant reads from it.

    ``<store>/<split>-<key16>/``: the key covers the split's rows in order (``smart101.rows_fingerprint``:
    CSV fields and each image's size and mtime) and ``FORMAT_VERSION``. It holds the label fields once
    (``labels.npy``, ``puzzle_ids.npy``, ...; ``labels.json`` once they are complete) and any number of
    columns, each immutable once renamed into place.
    """

    entry: pathlib.Path
    num_rows: int
    vision: tuple[Column, ...]
    text: Column

    @property
    def columns(self) -> tuple[Column, ...]:
        return (*self.vision, self.text)

    def column_path(self, column: Column) -> pathlib.Path:
        return self.entry / f"{column.name}.npy"

    def missing(self) -> list[Column]:
        """The columns this entry does not hold yet (all of them while its labels are incomplete)."""
        if not (self.entry / LABELS_DONE).exists():
            return list(self.columns)
        return [c for c in self.columns if not self.column_path(c).exists()]

    def load(self) -> dict[str, np.ndarray | tuple[np.ndarray, ...]]:
        """The split's cache in row order: "vision" a tuple of read-only memmaps (one per vision tower, the
        variant's order), "text" and each label field one memmap; nothing read yet."""
        cache: dict = {f: _load_memmap(self.entry / f"{f}.npy") for f in LABEL_FIELDS}
        cache["vision"] = tuple(_load_memmap(self.column_path(c)) for c in self.vision)
        cache["text"] = _load_memmap(self.column_path(self.text))
        return cache


def plan_split(store: str | os.PathLike, split: str, rows_fingerprint: str, num_rows: int,
               columns: tuple[tuple[Column, ...], Column]) -> SplitPlan:  # fmt: skip
    """The :class:`SplitPlan` of a split's rows (their ``smart101.rows_fingerprint``) in ``store``."""
    key = hashing.digest_json({"format": FORMAT_VERSION, "split": split, "rows": rows_fingerprint})
    entry = pathlib.Path(store).absolute() / f"{split}-{key[:16]}"
    return SplitPlan(entry, num_rows, *columns)


def _load_memmap(path: pathlib.Path) -> np.ndarray:
    array = np.load(path, mmap_mode="r")
    if _row_bytes(array) >= mmap.PAGESIZE:
        array._mmap.madvise(mmap.MADV_RANDOM)  # see load_split
    return array


@contextlib.contextmanager
def _locked(entry: pathlib.Path, enabled: bool) -> Iterator[None]:
    """An exclusive ``flock`` on ``<entry>/lock`` (process 0 of a job; others wait at the barriers): a
    second job extracting into the same entry waits, then finds what the first wrote."""
    if not enabled:
        yield
        return
    entry.mkdir(parents=True, exist_ok=True)
    with open(entry / LOCK_FILE, "a") as lock:
        if not _try_lock(lock):
            log.info("features %s: waiting for another run extracting into it", entry)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _try_lock(lock) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _agreed_missing(plan: SplitPlan) -> list[Column]:
    """The columns process 0 finds missing, on every process (they extract together)."""
    missing = plan.missing()
    if jax.process_count() == 1:
        return missing
    mask = np.asarray([c in missing for c in plan.columns], np.int32)
    mask = np.asarray(multihost_utils.broadcast_one_to_all(mask))
    return [c for c, m in zip(plan.columns, mask, strict=True) if m]


def missing_everywhere(plan: SplitPlan) -> list[Column]:
    """The columns of ``plan`` missing from its store entry, as process 0 sees it, on every process."""
    return _agreed_missing(plan)


def fill_split(
    plan: SplitPlan, extract: Callable[[list[Column], pathlib.Path], object]
) -> list[Column]:
    """Make ``plan.entry`` hold every column of the plan and the label fields; returns those extracted.

    Under the entry's lock, ``extract(missing, work_dir)`` is called with the columns still missing; it
    must leave a finished :func:`extract_split` cache (their fields and the label fields) in
    ``work_dir`` = ``<entry>/extracting-<key16 of the missing set>/``, where a killed extraction resumes.
    Then (process 0) each column's ``.json`` and ``.npy`` and, when the entry lacks them, the label fields
    are renamed into the entry, ``labels.json`` written, and the work dir removed.
    """
    lead = jax.process_index() == 0
    if not plan.missing() and jax.process_count() == 1:
        return []
    with _locked(plan.entry, enabled=lead):
        missing = _agreed_missing(plan)
        if not missing:
            return []
        names = sorted(c.name for c in missing)
        work = plan.entry / f"extracting-{hashing.digest_json(names)[:16]}"
        extract(missing, work)
        # Every process has read the work dir (extract_split ends by loading it) before process 0 moves
        # its files into the entry and removes it.
        multihost_utils.sync_global_devices(f"features extracted {plan.entry}")
        if lead:
            if not (plan.entry / LABELS_DONE).exists():
                for field in LABEL_FIELDS:
                    os.replace(work / f"{field}.npy", plan.entry / f"{field}.npy")
                _atomic_write_json(plan.entry / LABELS_DONE, {"rows": plan.num_rows, "fields": LABEL_FIELDS})
            for column in missing:
                _atomic_write_json(plan.entry / f"{column.name}.json", dict(column.inputs))
                os.replace(work / f"{column.field}.npy", plan.column_path(column))
            shutil.rmtree(work)
        multihost_utils.sync_global_devices(f"features stored {plan.entry}")
    return missing


def _atomic_write_json(path: pathlib.Path, value: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def write_record(path: str | os.PathLike, store: pathlib.Path, plans: Mapping[str, SplitPlan],
                 extracted: Mapping[str, Sequence[Column]]) -> None:  # fmt: skip
    """``<workdir>/features.json``: the store, and per split its entry, the columns the run read (vision
    in order, text) and those this run extracted."""
    record = {
        "store": str(store),
        "format": FORMAT_VERSION,
        "splits": {
            split: {
                "entry": str(plan.entry),
                "rows": plan.num_rows,
                "vision": [c.name for c in plan.vision],
                "text": plan.text.name,
                "extracted": [c.name for c in extracted.get(split, ())],
            }
            for split, plan in plans.items()
        },
    }
    _atomic_write_json(pathlib.Path(path), record)


def read_recorded(workdir: str | os.PathLike, split: str) -> dict[str, np.ndarray]:
    """The features a run trained or evaluated on (its ``features.json``), as the head takes them:
    "vision" [N, sum D] (the columns concatenated, in memory), "text" and the label fields (memmaps).
    FileNotFoundError when the workdir or the store no longer holds them."""
    record_file = pathlib.Path(workdir) / RECORD_FILE
    if not record_file.is_file():
        raise FileNotFoundError(f"{record_file} does not exist: the run cached no features")
    info = json.loads(record_file.read_text())["splits"][split]
    entry = pathlib.Path(info["entry"])
    cache = {f: _load_memmap(entry / f"{f}.npy") for f in LABEL_FIELDS}
    cache["vision"] = np.concatenate([_load_memmap(entry / f"{n}.npy") for n in info["vision"]], axis=-1)
    cache["text"] = _load_memmap(entry / f"{info['text']}.npy")
    return cache
