"""The input pipeline: built `smart101` TFDS dataset -> grain -> host-local batches -> global arrays.

Order of operations (every process runs the same plan and keeps its own slice):
  split record numbers (from the builder's metadata index, no image decoded)
  -> per-epoch order: a permutation seeded by (seed, epoch), truncated to whole global batches
     (drop_remainder) or padded to whole global batches with masked copies (so every process yields the
     same number of batches and evaluation sees every example with static shapes)
  -> this process's contiguous block of each global batch, disjoint and complete across processes
  -> read + decode: PNG bytes -> RGB, shorter side 224 (the reference's PIL resize) -> each tower's
     resizer; question -> tokenizer
  -> batch of global_batch_size / process_count rows.
The result is a grain IterDataset; `iter()` gives a DatasetIterator whose state saves and restores
through orbax with `grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)`, so a resumed run
sees exactly the next batch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping

import grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from smartvlm_jax import console, images
from smartvlm_jax.data import smart101
from smartvlm_jax.data.tfds_smart101 import SPLIT, dataset_path

Batch = dict[str, np.ndarray]


class Smart101Source:
    """Random access to the built records, opened lazily so that it pickles into grain worker processes.

    Its repr names only the folder: grain's multiprocess workers need a stable one.
    """

    def __init__(self, data_dir: str | os.PathLike):
        self._path = dataset_path(data_dir)
        if not os.path.exists(os.path.join(self._path, "dataset_info.json")):
            raise FileNotFoundError(
                f"no smart101 dataset in {self._path}; run python -m smartvlm_jax.data.build"
            )
        self._source = None

    def _open(self):
        if self._source is None:
            self._source = tfds.builder_from_directory(self._path).as_data_source(SPLIT)
        return self._source

    def __len__(self) -> int:
        return len(self._open())

    def __getitem__(self, record: int) -> dict:
        return self._open()[record]

    def __repr__(self) -> str:
        return f"Smart101Source({self._path!r})"

    def __getstate__(self) -> dict:
        return {"_path": self._path, "_source": None}

    def metadata(self) -> dict:
        """The builder's metadata: source, puzzle_ids, num_rows, num_classes, skipped, index."""
        return dict(tfds.builder_from_directory(self._path).info.metadata)


def split_records(data_dir: str | os.PathLike, split: str, data_cfg: ml_collections.ConfigDict) -> np.ndarray:
    """Record numbers of `split` in the built dataset under `data_cfg`, sorted by (puzzle id, CSV row).

    Uses the builder's index (puzzle id, CSV row, label[0] per record; CSV length and C_p per puzzle),
    restricted to `data_cfg.puzzle_ids`.
    """
    meta = Smart101Source(data_dir).metadata()
    index = meta["index"]
    pids = np.asarray(index["puzzle_id"], np.int64)
    built = [int(p) for p in meta["puzzle_ids"]]
    if data_cfg.puzzle_ids != "all":
        wanted = smart101.resolve_puzzle_ids("", data_cfg.puzzle_ids)
        missing = sorted(set(wanted) - set(built))
        if missing:
            raise ValueError(f"puzzles {missing} are not in {dataset_path(data_dir)}; it holds {built}")
        keep = np.flatnonzero(np.isin(pids, wanted))
    else:
        keep = np.arange(len(pids))
    rows = np.asarray(index["row_index"], np.int64)[keep]
    labels = [(int(v),) for v in np.asarray(index["label0"])[keep]]
    chosen = smart101.split_indices(
        pids[keep].tolist(),
        rows.tolist(),
        labels,
        split,
        data_cfg,
        {int(p): int(c) for p, c in meta["num_classes"].items()},
        {int(p): int(n) for p, n in meta["num_rows"].items()},
    )
    return keep[chosen]


def examples_per_epoch(num_records: int, global_batch_size: int, drop_remainder: bool) -> int:
    """Examples of one epoch as the pipeline yields them: whole global batches, padded or truncated."""
    if drop_remainder:
        return num_records // global_batch_size * global_batch_size
    return -(-num_records // global_batch_size) * global_batch_size


class _EpochPlan:
    """Example number -> (record number, mask) over epochs: a (seed, epoch) permutation of the split's
    records, truncated or padded (with masked copies of the epoch's first record) to `per_epoch`."""

    def __init__(self, records: np.ndarray, per_epoch: int, seed: int, shuffle: bool):
        self._records = np.asarray(records, np.int64)
        self._per_epoch = per_epoch
        self._seed = seed
        self._shuffle = shuffle
        self._cached: tuple[int, np.ndarray] | None = None  # last epoch's order; a permutation is O(n)

    def _order(self, epoch: int) -> np.ndarray:
        cached = self._cached
        if cached is not None and cached[0] == epoch:
            return cached[1]
        order = self._records
        if self._shuffle:
            order = order[np.random.default_rng([self._seed, epoch]).permutation(len(order))]
        self._cached = (epoch, order)
        return order

    def __call__(self, number: int) -> tuple[int, bool]:
        epoch, j = divmod(int(number), self._per_epoch)
        order = self._order(epoch)
        if j < len(order):
            return int(order[j]), True
        return int(order[0]), False


class _ProcessBlock:
    """Local example number -> the plan's (record, mask) at this process's block of each global batch."""

    def __init__(self, plan: _EpochPlan, global_batch_size: int, process_index: int, process_count: int):
        self._plan = plan
        self._local = global_batch_size // process_count
        self._global = global_batch_size
        self._offset = process_index * self._local

    def __call__(self, number: int) -> tuple[int, bool]:
        batch, row = divmod(int(number), self._local)
        return self._plan(batch * self._global + self._offset + row)


class _Decode:
    """Record -> example: the reference's image (RGB, shorter side 224), each tower's resize, tokens."""

    def __init__(
        self,
        source: Smart101Source,
        preprocessors: Mapping[str, Callable[[Image.Image], np.ndarray]],
        tokenizer: Callable[[list[str]], np.ndarray],
        image_side: int,
    ):
        self._source = source
        self._preprocessors = dict(preprocessors)
        self._tokenizer = tokenizer
        self._side = image_side

    def __call__(self, planned: tuple[int, bool]) -> Batch:
        record_number, mask = planned
        record = self._source[record_number]
        image = smart101.resize_shorter_side(images.open_image(bytes(record["image"])), self._side)
        question = record["question"]
        question = question.decode("utf-8") if isinstance(question, bytes) else str(question)
        example = {
            f"image/{name}": np.asarray(fn(image), np.uint8) for name, fn in self._preprocessors.items()
        }
        example.update(
            question_ids=np.asarray(self._tokenizer([question]), np.int32)[0],
            labels=np.asarray(record["label"], np.int32),
            puzzle_ids=np.int32(record["puzzle_id"]),
            instance_ids=np.int32(record["instance_id"]),
            option_values=np.asarray(record["option_values"], np.int32),
            answer_index=np.int32(record["answer_index"]),
            mask=np.bool_(mask),
        )
        return example


def example_plan(
    records: np.ndarray,
    *,
    global_batch_size: int,
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    drop_remainder: bool,
    process_index: int,
    process_count: int,
) -> grain.MapDataset:
    """This process's (record, mask) pairs over the epochs: the one definition of example order.

    Shared by the image pipeline and by training on cached features (pass the split's row positions as
    `records`), so both see the same examples in the same batches.
    """
    per_epoch = examples_per_epoch(len(records), global_batch_size, drop_remainder)
    if per_epoch == 0:
        raise ValueError(f"{len(records)} examples are fewer than one global batch of {global_batch_size}")
    total = per_epoch * num_epochs if num_epochs is not None else sys.maxsize // per_epoch * per_epoch
    plan = _EpochPlan(records, per_epoch, seed, shuffle)
    # Every process takes the same plan and keeps its contiguous block of each global batch: disjoint,
    # complete, the same number of batches everywhere (per_epoch is a multiple of the global batch), and
    # the global batch assembled from the processes' blocks is, row for row, the one a single process
    # sees, so dropout masks and batch-order effects do not depend on the number of processes.
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} does not divide among {process_count} processes")
    local = _ProcessBlock(plan, global_batch_size, process_index, process_count)
    return grain.MapDataset.range(total // process_count).map(local)


def make_pipeline(
    data_dir: str | os.PathLike,
    split: str,
    data_cfg: ml_collections.ConfigDict,
    *,
    global_batch_size: int,
    preprocessors: Mapping[str, Callable[[Image.Image], np.ndarray]],
    tokenizer: Callable[[list[str]], np.ndarray],
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    drop_remainder: bool,
    process_index: int | None = None,
    process_count: int | None = None,
    worker_count: int = 0,
    read_threads: int = 4,
    start_batch: int = 0,
) -> grain.IterDataset:
    """Host-local batches of `split` for this process (see the module docstring for the plan).

    Yields dicts: "image/<name>" uint8 [b,S,S,3] per preprocessor, "question_ids" int32 [b,T],
    "labels" int32 [b,10], "puzzle_ids", "instance_ids", "answer_index" int32 [b], "option_values"
    int32 [b,5,10], "mask" bool [b], with b = global_batch_size / process_count. `num_epochs=None`
    repeats forever. `worker_count > 0` decodes in that many processes (needs a `__main__` guard);
    `read_threads` decode in threads of this process. `start_batch` skips that many batches of the plan
    without reading or decoding them (a resumed feature extraction starts where its shards end).
    """
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"global batch {global_batch_size} does not divide among {process_count} processes")
    source = Smart101Source(data_dir)
    records = split_records(data_dir, split, data_cfg)
    try:
        ds = example_plan(
            records,
            global_batch_size=global_batch_size,
            seed=seed,
            shuffle=shuffle,
            num_epochs=num_epochs,
            drop_remainder=drop_remainder,
            process_index=process_index,
            process_count=process_count,
        )
    except ValueError as e:
        raise ValueError(f"split {split!r}: {e}") from None
    local_batch = global_batch_size // process_count
    ds = ds[start_batch * local_batch :]
    ds = ds.map(_Decode(source, preprocessors, tokenizer, data_cfg.get("image_side", smart101.IMAGE_SIDE)))
    if worker_count > 0:
        # Worker processes take every worker_count-th element of what they are given, and mp_prefetch
        # interleaves their outputs in turn: given whole batches, batch k comes from worker k % n and
        # the order is that of worker_count=0. (Given examples batched later, each worker batched its
        # own every-n-th examples: batch 0 held rows 0, 2, 4, ...) Each worker decodes its batch's
        # examples in its own threads.
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags: their defaults, outside an app
            flags.FLAGS.mark_as_parsed()
        batched = ds.batch(local_batch, drop_remainder=True)
        read = grain.ReadOptions(num_threads=max(1, read_threads // worker_count), prefetch_buffer_size=2)
        return batched.to_iter_dataset(read).mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count),
            worker_init_fn=console.worker_routing(),  # workers log where this process does
        )
    # Threads decode single examples ahead of the batcher; a batch then needs no more than a copy.
    read = grain.ReadOptions(
        num_threads=read_threads, prefetch_buffer_size=max(2 * local_batch, read_threads)
    )
    return ds.to_iter_dataset(read).batch(local_batch, drop_remainder=True)


def global_batch(batch: Batch, sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Host-local batch -> global jax.Arrays on the mesh (leading axis split over processes)."""
    if jax.process_count() == 1:  # the local batch is the global one: one transfer (docs/performance.md)
        return jax.device_put(dict(batch), sharding)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
