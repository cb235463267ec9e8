"""The steps' inputs: features read from the store, or images that the frozen towers turn into features
inside the step. Either way the batches follow the image pipeline's example plan, so cached and uncached
runs see the same examples in the same batches.

:func:`prepare_inputs` fills the store with what it lacks (running only the towers of missing columns)
and returns the run's :class:`Inputs`.
"""

import dataclasses
import functools
import logging
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

import grain
import jax
import numpy as np

from smartvlm_jax import features, parallel
from smartvlm_jax.data import pipeline
from smartvlm_jax.train.setup import Run, data_seed
from smartvlm_jax.train.signals import StopSignal

log = logging.getLogger(__name__)


class GatherCached:
    """Turns a batch of (row position, mask) pairs into a batch of cached features and labels.

    The cache's arrays are memmaps (``features.SplitPlan.load``; "vision" a tuple of per-tower columns,
    concatenated here): ``features.read_rows`` reads the batch's rows only. float16-stored features
    become float32 here, on their way to the device. Every ``release_bytes`` read, the memmaps' pages
    leave the process's resident set (``features.release``), so an epoch over a cache larger than memory
    keeps the RSS small: the kernel maps whole page-cache folios around each row read, several times the
    bytes a shuffled batch reads (docs/performance.md).
    """

    def __init__(self, cache: Mapping[str, np.ndarray], release_bytes: int = 32 << 20):
        self._cache = cache
        self._release_bytes = release_bytes
        self._read = 0

    def __call__(self, planned: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        rows, mask = planned
        rows = np.asarray(rows)
        batch = {}
        for key, value in self._cache.items():
            if isinstance(value, tuple):  # one column per tower, concatenated in the variant's order
                batch[key] = np.concatenate([features.read_rows(c, rows) for c in value], axis=-1)
            else:
                batch[key] = features.read_rows(value, rows)
        self._read += sum(v.nbytes for v in batch.values())
        if self._read >= self._release_bytes:
            features.release_all(self._cache)
            self._read = 0
        batch = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in batch.items()}
        batch["mask"] = np.asarray(mask, bool)
        return batch


def cached_batches(
    cache: Mapping[str, np.ndarray], global_batch: int, *, seed: int, shuffle: bool, num_epochs: int
) -> grain.MapDataset:
    """Host-local batches of cached rows, in the order ``pipeline.make_pipeline`` gives the same split."""
    plan = pipeline.example_plan(
        np.arange(len(cache["labels"])),
        global_batch_size=global_batch,
        seed=seed,
        shuffle=shuffle,
        num_epochs=num_epochs,
        drop_remainder=False,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return plan.batch(global_batch // jax.process_count()).map(GatherCached(cache))


def image_batches(
    run: Run,
    towers: features.FrozenTowers,
    split: str,
    *,
    shuffle: bool,
    num_epochs: int,
    global_batch: int,
    start_batch: int = 0,
):
    """Image batches of a split, resized for ``towers`` and tokenized by its text tower."""
    return pipeline.make_pipeline(
        run.data_cfg.data_dir,
        split,
        run.data_cfg,
        global_batch_size=global_batch,
        preprocessors=towers.preprocessors(),
        tokenizer=towers.tokenizer,
        seed=data_seed(run.config),
        shuffle=shuffle,
        num_epochs=num_epochs,
        drop_remainder=False,
        worker_count=run.config.worker_count,
        start_batch=start_batch,
    )


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Where a run's step inputs come from: ``caches`` (split -> stored feature columns and labels, as
    memmaps) when it caches features, else ``towers`` and their placed ``tower_params``, run inside the
    step on image batches."""

    run: Run
    caches: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    towers: features.FrozenTowers | None = None
    tower_params: Any = None

    def batches(self, split: str, *, shuffle: bool, num_epochs: int, global_batch: int):
        """Host batches of a split; the same examples in the same order whichever the source."""
        if self.towers is None:
            seed = data_seed(self.run.config)
            cache = self.caches[split]
            return cached_batches(cache, global_batch, seed=seed, shuffle=shuffle, num_epochs=num_epochs)
        return image_batches(
            self.run, self.towers, split, shuffle=shuffle, num_epochs=num_epochs, global_batch=global_batch
        )


def place_towers(run: Run, frozen: features.FrozenTowers):
    """``frozen``'s parameters placed on the mesh (replicated, or FSDP with ``config.towers.fsdp``)."""
    rules = parallel.TOWER_FSDP_RULES if run.towers_cfg.fsdp else parallel.REPLICATED_RULES
    params = frozen.params()
    return jax.device_put(params, parallel.shardings_for(params, run.mesh, rules))


def prepare_inputs(run: Run, stop: StopSignal | None = None, record: bool = True) -> Inputs:
    """The run's inputs: with ``config.cache_features``, every split's stored features (extracting the
    columns the store lacks); otherwise the variant's towers, loaded and placed for the step.

    ``stop``: raise ``Stopped`` between extraction batches once a stop is requested; the shards written
    so far stay, and the next run resumes at the first missing one (``features.extract_split``).
    ``record``: write ``<workdir>/features.json`` (what the run read and extracted)."""
    if not run.config.cache_features:
        with run.timing("towers"):
            frozen = features.load_towers(run.towers_cfg, run.config.model.variant)
            return Inputs(run, towers=frozen, tower_params=place_towers(run, frozen))
    missing = {split: features.missing_everywhere(plan) for split, plan in run.feature_plans.items()}
    needed = list({c.name: c for columns in missing.values() for c in columns}.values())
    extractor = None
    if needed:  # a run whose columns are all stored loads no tower
        with run.timing("towers"):
            extractor = Extractor.load(run, needed, stop)
    extracted, caches = {}, {}
    for split, plan in run.feature_plans.items():
        with run.timing(f"features/{split}") as counts:
            extracted[split] = features.fill_split(
                plan, functools.partial(extractor, split) if extractor else None
            )
            if extracted[split]:  # samples/s: the split's rows over the whole extraction, compiling included
                counts["samples"] = len(run.splits[split])
            caches[split] = plan.load()
    if run.is_lead and record:
        features.write_record(run.workdir.feature_record, run.feature_store, run.feature_plans, extracted)
    if run.is_lead:
        log_extracted(run, extracted)
    # The steps read the stored features: the towers' parameters leave the devices (and every run passes
    # the steps the same arguments, whether it extracted or not, so XLA's cache serves them all).
    return Inputs(run, caches=caches)


def log_extracted(run: Run, extracted: Mapping[str, list[features.Column]]) -> None:
    """One line: the columns extracted into the store, or the stored columns reused."""
    names = sorted({c.name for columns in extracted.values() for c in columns})
    if names:
        log.info("features: extracted %s into %s", ", ".join(names), run.feature_store)
    else:
        stored = ", ".join(c.name for c in run.feature_plans["train"].columns)
        log.info("features: reused the stored %s in %s (no tower loaded)", stored, run.feature_store)


@dataclasses.dataclass(frozen=True)
class Extractor:
    """The towers of the columns a store lacks, placed on the mesh: computes a split's missing columns."""

    run: Run
    frozen: features.FrozenTowers
    params: Any
    stop: StopSignal | None = None

    @classmethod
    def load(
        cls, run: Run, columns: Iterable[features.Column], stop: StopSignal | None = None
    ) -> "Extractor":
        vision = [c.tower for c in columns if c.field != features.TEXT_FIELD]
        text = any(c.field == features.TEXT_FIELD for c in columns)
        frozen = features.load_towers(run.towers_cfg, run.config.model.variant, vision=vision, text=text)
        return cls(run, frozen, place_towers(run, frozen), stop)

    def __call__(self, split: str, columns: list[features.Column], work_dir: pathlib.Path) -> None:
        """Extract ``columns`` of ``split`` into ``work_dir`` (``features.fill_split``'s callback)."""
        run, rows = self.run, self.run.splits[split]
        towers = towers_for(self.frozen, columns)
        params = self.params
        if towers is not self.frozen:  # the towers of the columns still missing here, a subset
            params = {"vision": {n: params["vision"][n] for n in towers.vision}}
            if towers.text is not None:
                params["text"] = self.params["text"]
        positions = {(r.puzzle_id, r.instance_id): i for i, r in enumerate(rows)}

        def row_position(puzzle_ids, instance_ids):
            pairs = zip(puzzle_ids, instance_ids, strict=True)
            return np.asarray([positions[(int(p), int(i))] for p, i in pairs])

        def batches(**kwargs):
            found = image_batches(
                run,
                towers,
                split,
                shuffle=False,
                num_epochs=1,
                global_batch=run.config.eval_batch_size,
                **kwargs,
            )
            return found if self.stop is None else self.stop.guard(found, f"the {split} feature extraction")

        features.extract_split(
            towers,
            batches,
            run.to_global,
            row_position,
            len(rows),
            work_dir,
            shard_batches=run.config.feature_shard_batches,
            params_sharding=jax.tree.map(lambda x: x.sharding, params),
            storage_dtype=run.config.feature_dtype,
            name=split,
        )


def towers_for(frozen: features.FrozenTowers, columns: Iterable[features.Column]) -> features.FrozenTowers:
    """``frozen`` itself when it computes exactly ``columns``, else the view of its towers that does."""
    columns = list(columns)
    vision = [c.tower for c in columns if c.field != features.TEXT_FIELD]
    text = any(c.field == features.TEXT_FIELD for c in columns)
    if list(frozen.vision) == vision and (frozen.text is not None) == text:
        return frozen
    return features.FrozenTowers(
        vision={n: t for n, t in frozen.vision.items() if n in vision},
        text=frozen.text if text else None,
        text_output=frozen.text_output,
    )
