"""Training and evaluation of the reasoner head: the train state, the jitted steps, the loop.

One straight line: data (SMART-101 or synthetic) -> frozen-tower features (cached once, or recomputed in
the step) -> reasoner -> loss -> AdamW -> new state -> Orbax. The workdir holds everything of a run, and
a rerun with the same workdir resumes from its latest checkpoint on the exact next batch. Progress shows
as one bar (or plain line) per stage and epoch (``console.Progress``); the run ends with the test table
and a summary of where its outputs are.
"""

import dataclasses
import functools
import json
import logging
import math
import pathlib
import shutil
import signal
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from clu import metrics as clu_metrics
from jax.experimental import multihost_utils

from smartvlm_jax import console, features, metrics, optim, parallel, reasoner, reports, summaries, variants
from smartvlm_jax.data import pipeline, smart101
from smartvlm_jax.reasoner import presence
from smartvlm_jax.workdir import Workdir, user_cache_dir

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
EVAL_FIELDS = ("labels", "puzzle_ids", "option_values", "answer_index", "mask")
# The loop reads the train metrics of logged steps at most this often (seconds; epoch ends and saves always
# read): what the console, log.jsonl and TensorBoard show lags the dispatched steps by about this much.
METRICS_READ_SECS = 1.0


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data iterator: a plain pytree for Orbax.

    A group's members (:func:`train_members`) stack it on a leading member axis [N, ...]."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data; dropout keys are folded from it with the step


# (No `from __future__ import annotations` here: clu reads these annotations as metric classes.)
@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    loss: clu_metrics.Average.from_output("loss")
    grad_norm: clu_metrics.Average.from_output("grad_norm")
    learning_rate: clu_metrics.LastValue.from_output("learning_rate")


def window_to_json(window: TrainMetrics | None) -> list | None:
    """The train metrics accumulated since the last logged step, as JSON numbers (for the checkpoint):
    one number per leaf, or a list of N per leaf for a group's stacked metrics."""
    if window is None:
        return None
    return [np.asarray(x).tolist() for x in jax.tree.leaves(jax.device_get(window))]


def window_from_json(values: list[float] | None) -> TrainMetrics | None:
    """Inverse of :func:`window_to_json` (each leaf back to its dtype, and its shape: () or [N])."""
    if values is None:
        return None
    template = TrainMetrics.single_from_model_output(loss=0.0, grad_norm=0.0, learning_rate=0.0)
    leaves, treedef = jax.tree.flatten(template)
    if len(values) != len(leaves):
        raise ValueError(f"checkpointed train-metrics window: {len(values)} values, expected {len(leaves)}")
    typed = [np.asarray(v, np.asarray(t).dtype) for v, t in zip(values, leaves, strict=True)]
    return jax.tree.unflatten(treedef, typed)


# ----------------------------------------------------------------------------------------------------
# Pure steps.


def head_inputs(batch: Mapping[str, jax.Array], towers, tower_params) -> tuple[jax.Array, jax.Array]:
    """(vision, text) features: cached ones from the batch, or the frozen towers run on its images."""
    if "vision" in batch:
        return batch["vision"], batch["text"]
    vision, text = towers.features(tower_params, batch)
    return jax.lax.stop_gradient(vision), jax.lax.stop_gradient(text)


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    tower_params,
    *,
    model,
    model_cfg: ml_collections.ConfigDict,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    towers=None,
    pdrop: jax.Array | None = None,
    active: jax.Array | None = None,
) -> tuple[TrainState, TrainMetrics]:
    """One AdamW update of the head; the towers (if any) are frozen inputs, never differentiated.

    ``pdrop`` (float32 scalar, may be traced) replaces ``model_cfg.pdrop``, as a member's does. ``active``
    (bool scalar, traced; for the row-sparse optimiser, ``optim.skip_absent_rows``): False leaves every row
    of every parameter, its moments and its counts as they were, through the optimiser's row mask.
    """
    vision, text = head_inputs(batch, towers, tower_params)
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    rows = reasoner.row_presence(model_cfg, state.params, batch["puzzle_ids"], batch["mask"])
    if active is not None:
        rows = rows_if_active(state.params, rows, active)
    full_state, kept = state, None
    if optim.skips_absent_rows(state.opt_state):
        kept = presence.encoder_rows(model_cfg)
    if kept is not None:  # the other encoder rows cannot change: update the run's puzzles' rows only
        state, rows = presence.take_encoder_rows((state, rows), kept)
        model = model.clone(encoder_rows=kept)

    def loss_fn(params):
        logits = model.apply(
            {"params": params},
            vision,
            text,
            batch["puzzle_ids"],
            train=True,
            pdrop=pdrop,
            rngs={"dropout": dropout_rng},
        )
        return reasoner.loss(logits, batch["labels"], batch["puzzle_ids"], model_cfg, mask=batch["mask"])

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, row_mask=rows)
    new_state = state.replace(
        step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
    )
    if kept is not None:
        new_state = presence.put_encoder_rows(full_state, new_state, kept)
    metrics = TrainMetrics.single_from_model_output(
        loss=loss, grad_norm=optax.tree.norm(grads), learning_rate=schedule(state.step)
    )
    return new_state, metrics


def member_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    tower_params,
    hparams: Mapping[str, jax.Array],
    active: jax.Array,
    *,
    model,
    model_cfg: ml_collections.ConfigDict,
    optim_cfg: ml_collections.ConfigDict,
    total_steps: int,
    towers=None,
) -> tuple[TrainState, TrainMetrics]:
    """:func:`train_step` of one member, for ``jax.vmap`` over members: its optimiser and schedule built
    from its own ``hparams`` ("lr", "weight_decay", "pdrop": float32 scalars, traced), and its state left
    as it was where ``active`` (bool scalar) is False, so a member whose patience ran out stays frozen.

    With the row-sparse optimiser (``optim.skip_absent_rows``) a frozen member's rows are masked out of the
    update itself and only the scalar counters are selected; selecting whole states instead (the dense
    optimiser's way) keeps two copies of the state alive and made the step ~3x slower on CPU."""
    sparse = optim.skips_absent_rows(state.opt_state)
    new_state, step_metrics = train_step(
        state,
        batch,
        tower_params,
        model=model,
        model_cfg=model_cfg,
        tx=optim.make_optimizer(
            optim_cfg, total_steps, lr=hparams["lr"], weight_decay=hparams["weight_decay"]
        ),
        schedule=optim.learning_rate_schedule(optim_cfg, total_steps, hparams["lr"]),
        towers=towers,
        pdrop=hparams["pdrop"],
        active=active if sparse else None,
    )
    keep = lambda new, old: jnp.where(active, new, old) if not sparse or jnp.ndim(new) == 0 else new  # noqa: E731
    return jax.tree.map(keep, new_state, state), step_metrics


def rows_if_active(params, rows, active: jax.Array):
    """``reasoner.row_presence``'s row masks with every row off where ``active`` is False: a tree like
    ``params`` of bool [leading rows] (shared leaves, None in ``rows``, get all their rows)."""
    treedef = jax.tree.structure(params)
    masks = treedef.flatten_up_to(rows)
    return treedef.unflatten([
        jnp.broadcast_to(active, jnp.shape(p)[:1]) if m is None else m & active
        for p, m in zip(jax.tree.leaves(params), masks, strict=True)
    ])  # fmt: skip


def predict_step(params, batch, tower_params, *, model, model_cfg, towers=None) -> jax.Array:
    """Predicted answer values [B, K] (argmax per decode position)."""
    vision, text = head_inputs(batch, towers, tower_params)
    logits = model.apply({"params": params}, vision, text, batch["puzzle_ids"], train=False)
    return reasoner.predictions(logits, batch["puzzle_ids"], model_cfg)


# ----------------------------------------------------------------------------------------------------
# Cached features follow the image pipeline's example plan, so cached and uncached runs see the same
# examples in the same batches.


class GatherCached:
    """Turns a batch of (row position, mask) pairs into a batch of cached features and labels.

    The cache's arrays are memmaps (``features.SplitPlan.load``; "vision" a tuple of per-tower columns,
    concatenated here): ``features.read_rows`` reads the batch's rows only. float16-stored features
    become float32 here, on their way to the device. Every
    ``release_bytes`` read, the memmaps' pages leave the process's resident set (``features.release``), so
    an epoch over a cache larger than memory keeps the RSS small. (The kernel maps about 8x the bytes a
    shuffled batch reads, whole page-cache folios around each row: 32 MiB read holds ~300 MiB resident.)
    """

    def __init__(self, cache: Mapping[str, np.ndarray], release_bytes: int = 32 << 20):
        self._cache = cache
        self._release_bytes = release_bytes
        self._read = 0

    def __call__(self, planned: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        rows, mask = planned
        read = lambda v: features.read_rows(v, np.asarray(rows))  # noqa: E731
        # "vision" is one column per tower, concatenated in the variant's order as the head takes it
        batch = {
            k: np.concatenate([read(c) for c in v], axis=-1) if isinstance(v, tuple) else read(v)
            for k, v in self._cache.items()
        }
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


# ----------------------------------------------------------------------------------------------------
# Set-up: data, towers, model; every config field checked before any work.


@dataclasses.dataclass
class Run:
    """What the loop needs, resolved from the config once."""

    config: ml_collections.ConfigDict
    workdir: Workdir
    mesh: jax.sharding.Mesh
    data_cfg: ml_collections.ConfigDict
    splits: dict[str, list[smart101.Row]]
    num_classes: dict[int, int]
    towers_cfg: ml_collections.ConfigDict
    frozen: features.FrozenTowers | None  # None until a run needs them (cached features: only to extract)
    model_cfg: ml_collections.ConfigDict
    model: Any
    tower_params: Any = None
    caches: dict[str, dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    timing: summaries.StageTimes = dataclasses.field(default_factory=summaries.StageTimes)
    # each puzzle's skill type and name as the data root describes them (smart101.read_puzzle_info)
    puzzle_info: dict[int, smart101.PuzzleInfo] = dataclasses.field(default_factory=dict)
    compile_cache: pathlib.Path | None = None  # XLA's persistent compilation cache in use (None: off)
    compiles: summaries.CompileLog | None = None  # what XLA compiled or loaded, when recorded
    # cache_features: each split's feature-store entry and the columns the variant reads
    feature_plans: dict[str, features.SplitPlan] = dataclasses.field(default_factory=dict)
    feature_store: pathlib.Path | None = None

    @functools.cached_property
    def train_labels(self) -> dict[str, np.ndarray]:
        """The training split's label arrays, for the greedy baseline (built once per run)."""
        return smart101.label_arrays(self.splits["train"])

    @property
    def is_lead(self) -> bool:
        return jax.process_index() == 0

    @property
    def skills(self) -> dict[int, str]:
        return {pid: info.type for pid, info in self.puzzle_info.items()}

    @property
    def names(self) -> dict[int, str]:
        return {pid: info.name for pid, info in self.puzzle_info.items()}

    def to_global(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        return pipeline.global_batch(batch, parallel.batch_sharding(self.mesh))

    def image_batches(
        self,
        split: str,
        *,
        shuffle: bool,
        num_epochs: int,
        global_batch: int,
        start_batch: int = 0,
        towers: features.FrozenTowers | None = None,
    ):
        """Image batches resized for ``towers`` (default: the run's) and tokenized by its text tower."""
        towers = towers or self.frozen
        return pipeline.make_pipeline(
            self.data_cfg.data_dir,
            split,
            self.data_cfg,
            global_batch_size=global_batch,
            preprocessors=towers.preprocessors(),
            tokenizer=towers.tokenizer,
            seed=data_seed(self.config),
            shuffle=shuffle,
            num_epochs=num_epochs,
            drop_remainder=False,
            worker_count=self.config.worker_count,
            start_batch=start_batch,
        )

    def batches(self, split: str, *, shuffle: bool, num_epochs: int, global_batch: int):
        """Cached-feature batches when the run caches, image batches otherwise; same order either way."""
        if self.config.cache_features:
            return cached_batches(
                self.caches[split],
                global_batch,
                seed=data_seed(self.config),
                shuffle=shuffle,
                num_epochs=num_epochs,
            )
        return self.image_batches(split, shuffle=shuffle, num_epochs=num_epochs, global_batch=global_batch)


def data_seed(config: ml_collections.ConfigDict) -> int:
    """The seed of the data order: ``config.data_seed``, or ``config.seed`` where it is -1 (or absent)."""
    seed = int(config.get("data_seed", -1))
    return int(config.seed) if seed < 0 else seed


def check_config(config: ml_collections.ConfigDict) -> None:
    """Fail before any work on a field that cannot be right, naming it."""
    optim.make_optimizer(config.optim, total_steps=1)  # optimiser and schedule fields, named on error
    variants.check(config.model.features, config.model.get("head", "smarter"))
    if config.towers.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--config.towers.dtype={config.towers.dtype!r} is not 'float32' or 'bfloat16'")
    if not config.towers.tiny:
        for name in variants.get(config.model.features).towers:
            path = config.towers.get(name, "")
            if not path or not pathlib.Path(path).is_dir():
                raise FileNotFoundError(f"--config.towers.{name}={path!r} is not a directory")
    if not config.synthetic.enabled and not pathlib.Path(config.data.root or "/nonexistent").is_dir():
        raise FileNotFoundError(f"--config.data.root={config.data.root!r} is not a directory")
    if config.synthetic.enabled:
        from smartvlm_jax.data import synthetic

        try:
            synthetic.resolve_ids(config.synthetic.puzzles or None)
        except ValueError as e:
            raise ValueError(f"--config.synthetic.puzzles={config.synthetic.puzzles!r}: {e}") from None
    if config.data.split_type not in smart101.SPLIT_TYPES:
        raise ValueError(
            f"--config.data.split_type={config.data.split_type!r} is not one of {smart101.SPLIT_TYPES}"
        )
    if config.get("feature_dtype", "float32") not in features.STORAGE_DTYPES:
        raise ValueError(
            f"--config.feature_dtype={config.feature_dtype!r} is not one of {features.STORAGE_DTYPES}"
        )
    for field in ("num_epochs", "batch_size", "eval_batch_size", "checkpoint_every_steps", "log_every_steps"):
        if int(config[field]) < 1:
            raise ValueError(f"--config.{field}={config[field]} must be >= 1")
    if not float(config.get("checkpoint_min_interval_secs", 0.0)) >= 0:
        raise ValueError(
            f"--config.checkpoint_min_interval_secs={config.checkpoint_min_interval_secs} must be >= 0"
        )


def prepare_data(config: ml_collections.ConfigDict, workdir: Workdir):
    """Rows and splits of the run (writing synthetic puzzles first if asked) and the built TFDS dataset."""
    from smartvlm_jax.data import build, synthetic

    data_cfg = ml_collections.ConfigDict(config.data)
    if config.synthetic.enabled:
        data_cfg.root = str(workdir.synthetic)
        if jax.process_index() == 0 and not workdir.synthetic.exists():
            ids = synthetic.resolve_ids(config.synthetic.puzzles or None)
            with console.Progress("synthetic puzzles", len(ids), "puzzles") as progress:
                synthetic.write_dataset(
                    str(workdir.staging(workdir.synthetic)),
                    per_puzzle=config.synthetic.per_puzzle,
                    seed=config.synthetic.seed,
                    puzzle_ids=ids,
                    workers=config.synthetic.workers,
                    progress=lambda _: progress.update(1),
                )
            workdir.staging(workdir.synthetic).rename(workdir.synthetic)
        multihost_utils.sync_global_devices("synthetic data")
    root = pathlib.Path(data_cfg.root)
    available = smart101.found_puzzle_ids(root)
    puzzle_ids = smart101.resolve_puzzle_ids(root, data_cfg.puzzle_ids)
    missing = sorted(set(puzzle_ids) - set(available))
    if missing:
        raise ValueError(
            f"--config.data.puzzle_ids names puzzles {missing} absent from {root} (found {available})"
        )
    data_cfg.puzzle_ids = ",".join(str(p) for p in puzzle_ids)
    data_cfg.data_dir = data_cfg.data_dir or str(workdir.tfds)
    rows = smart101.read_rows(root, puzzle_ids)
    if data_cfg.skip_bad_rows:  # the builder drops the same rows; keep the splits in step with it
        rows, _ = smart101.drop_bad_images(rows, skip_bad_rows=True)
    if jax.process_index() == 0:
        build.build(root, data_cfg.data_dir, puzzle_ids, skip_bad_rows=data_cfg.skip_bad_rows)
    multihost_utils.sync_global_devices("tfds build")
    num_classes = smart101.num_classes(rows)
    splits = {s: smart101.split_rows(rows, s, data_cfg, num_classes) for s in SPLITS}
    split_ids = {}
    for name, split_rows in splits.items():
        if not split_rows:
            raise ValueError(f"the {name} split is empty under --config.data={data_cfg.to_dict()}")
        split_ids[name] = sorted({r.puzzle_id for r in split_rows})
    sizes = ", ".join(f"{name} {len(split_rows)}" for name, split_rows in splits.items())
    if all(ids == split_ids["train"] for ids in split_ids.values()):
        ids = split_ids["train"]
        log.info("splits (%s): %s rows of %d puzzles: %s", data_cfg.split_type, sizes, len(ids),
                 id_ranges(ids))  # fmt: skip
    else:  # puzzle and few-shot splits hold different puzzles
        log.info("splits (%s): %s rows", data_cfg.split_type, sizes)
        for name, ids in split_ids.items():
            log.info("  %s: %d puzzles: %s", name, len(ids), id_ranges(ids))
    return data_cfg, rows, splits, num_classes


def id_ranges(ids: Iterable[int]) -> str:
    """Sorted ids as compact ranges for a log line: [1, 2, 3, 7, 9, 10] -> "1-3, 7, 9-10"."""
    out: list[list[int]] = []
    for i in sorted(ids):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in out)


def check_tiny_towers(config: ml_collections.ConfigDict, workdir: Workdir) -> None:
    """ValueError when ``--config.towers.tiny`` would silently replace tower directories the config names
    (the run's own tiny towers under ``<workdir>/towers``, recorded by an earlier run, are fine)."""
    if not config.towers.tiny:
        return
    for name in variants.get(config.model.features).towers:
        path = config.towers.get(name, "")
        if path and pathlib.Path(path).absolute() != workdir.towers / name:
            raise ValueError(
                f"--config.towers.{name}={path!r} would be ignored: --config.towers.tiny=True builds random "
                "towers into the workdir; set --config.towers.tiny=False to use the directory"
            )


def prepare_towers(
    config: ml_collections.ConfigDict, workdir: Workdir, questions: Iterable[str]
) -> ml_collections.ConfigDict:
    """The tower directories of the run; tiny random ones (and their tokenizer) are built in the workdir."""
    from smartvlm_jax import towers as towers_lib

    towers_cfg = ml_collections.ConfigDict(config.towers)
    if not towers_cfg.tiny:
        return towers_cfg
    base = workdir.towers
    baseline = variants.get(config.model.features).head == "baseline"
    if jax.process_index() == 0 and not base.exists():
        tmp = workdir.staging(base)
        shutil.rmtree(tmp, ignore_errors=True)
        if baseline:  # the SMART baseline's ResNet + BERT, with a whole-word vocabulary of the questions
            bert_cfg = towers_lib.tiny_config("bert")
            vocab = towers_lib.write_wordpiece_vocab(
                sorted(questions), tmp / "tokenizer", bert_cfg["vocab_size"]
            )
            towers_lib.create_random(
                tmp / "resnet", "resnet", towers_lib.tiny_config("resnet"), seed=config.seed
            )
            towers_lib.create_random(
                tmp / "bert", "bert", bert_cfg, seed=config.seed + 1, tokenizer_model=vocab
            )
        else:
            siglip_cfg = towers_lib.tiny_config("siglip")
            spm = towers_lib.train_sentencepiece(
                sorted({q.lower() for q in questions}),
                tmp / "tokenizer",
                siglip_cfg["text_config"]["vocab_size"],
            )
            towers_lib.create_random(
                tmp / "dinov2", "dinov2", towers_lib.tiny_config("dinov2"), seed=config.seed
            )
            towers_lib.create_random(
                tmp / "siglip", "siglip", siglip_cfg, seed=config.seed + 1, tokenizer_model=spm
            )
        tmp.rename(base)
    multihost_utils.sync_global_devices("tiny towers")
    for name in ("resnet", "bert") if baseline else ("dinov2", "siglip"):
        towers_cfg[name] = str(base / name)
    return towers_cfg


def setup(config: ml_collections.ConfigDict, workdir: str | pathlib.Path | Workdir) -> Run:
    """The run of ``config`` in ``workdir``: data prepared, towers loaded and placed, head built, the
    resolved config written to the workdir (which must exist)."""
    workdir = Workdir(workdir)
    check_config(config)
    check_tiny_towers(config, workdir)
    compile_cache = parallel.enable_compile_cache(config.get("compile_cache_dir", ""))
    log.info("XLA compilation cache: %s", compile_cache or "off (--config.compile_cache_dir='')")
    timing = summaries.StageTimes()
    mesh = parallel.make_mesh(config.mesh.fsdp, parallel.mesh_devices(config.mesh.num_devices))
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh, "--config.eval_batch_size")
    with timing("dataset"):  # synthetic puzzles (if asked), rows and splits, the TFDS build
        data_cfg, rows, splits, num_classes = prepare_data(config, workdir)
    with timing("towers"):  # tiny towers built (if asked); loaded here only to run inside the step
        towers_cfg = prepare_towers(config, workdir, (r.question for r in rows))
        frozen = None if config.cache_features else features.load_towers(towers_cfg, config.model.features)
    model_cfg = ml_collections.ConfigDict(config.model)
    model_cfg.puzzle_ids = smart101.resolve_puzzle_ids(data_cfg.root, data_cfg.puzzle_ids)
    model_cfg.num_classes = [int(num_classes[p]) for p in model_cfg.puzzle_ids]
    # the towers' widths from their config files: a run on stored features loads no weights
    model_cfg.vision_dim, model_cfg.text_dim = features.variant_dims(towers_cfg, config.model.features)
    model = reasoner.build(model_cfg)  # validates: an unknown variant names its field
    run = Run(config, workdir, mesh, data_cfg, splits, num_classes, towers_cfg, frozen, model_cfg, model,
              timing=timing, puzzle_info=smart101.read_puzzle_info(data_cfg.root),
              compile_cache=compile_cache)  # fmt: skip
    if frozen is not None:
        place_towers(run, frozen)
    if config.cache_features:
        with timing("features/fingerprint"):
            plan_features(run)
    write_run_config(run)
    return run


def place_towers(run: Run, frozen: features.FrozenTowers) -> None:
    """Make ``frozen`` the run's towers, their parameters placed on the mesh (replicated or FSDP)."""
    rules = parallel.TOWER_FSDP_RULES if run.towers_cfg.fsdp else parallel.REPLICATED_RULES
    params = frozen.params()
    run.frozen = frozen
    run.tower_params = jax.device_put(params, parallel.shardings_for(params, run.mesh, rules))


def feature_store_dir(config: ml_collections.ConfigDict, workdir: Workdir) -> pathlib.Path:
    """Where the run's features are stored: ``config.feature_store``, or ``<workdir>/features`` when it is
    '' (opt-out) or when a multi-process job would use the default per-user cache, which other hosts do
    not see (a named store must be on a filesystem every host sees)."""
    store = config.get("feature_store", "")
    if not store:
        return workdir.feature_store
    if jax.process_count() > 1 and pathlib.Path(store).absolute() == user_cache_dir("features"):
        log.warning(
            "features: %d processes and the per-user default store %s, which other hosts may not see: "
            "storing in %s (name a shared store with --config.feature_store)",
            jax.process_count(), store, workdir.feature_store,
        )  # fmt: skip
        return workdir.feature_store
    return pathlib.Path(store).absolute()


def plan_features(run: Run) -> None:
    """``run.feature_plans``: each split's store entry (keyed by its rows' fingerprint) and the columns
    of the run's variant (keyed by the towers' contents, dtypes and preprocessing); reads no weights."""
    run.feature_store = feature_store_dir(run.config, run.workdir)
    columns = features.variant_columns(
        run.towers_cfg,
        run.config.model.features,
        storage_dtype=run.config.get("feature_dtype", "float32"),
        image_side=int(run.data_cfg.get("image_side", smart101.IMAGE_SIDE)),
        memo_dir=run.feature_store / "digests",
    )
    run.feature_plans = {
        split: features.plan_split(
            run.feature_store, split, smart101.rows_fingerprint(rows), len(rows), columns
        )
        for split, rows in run.splits.items()
    }


def write_run_config(run: Run) -> None:
    """``<workdir>/config.json``: the resolved run config; a workdir describes itself (predict, evaluate)."""
    if not run.is_lead:
        return
    resolved = ml_collections.ConfigDict(run.config)
    resolved.data = run.data_cfg
    resolved.towers = run.towers_cfg
    resolved.model = run.model_cfg
    text = resolved.to_json_best_effort(indent=2) + "\n"
    check_same_head(run.workdir, json.loads(text)["model"])
    run.workdir.config_file.write_text(text)


def check_same_head(workdir: Workdir, model: Mapping[str, Any]) -> None:
    """ValueError naming the ``--config.model.*`` fields that differ from the head a workdir's checkpoints
    hold: its parameters could not be restored into another head, and the workdir must keep describing
    what it holds (its ``config.json`` is not rewritten)."""
    checkpoints = workdir.checkpoints.is_dir() and any(workdir.checkpoints.iterdir())
    if not ((checkpoints or workdir.best_model.exists()) and workdir.config_file.is_file()):
        return
    saved = json.loads(workdir.config_file.read_text()).get("model", {})
    changed = sorted(k for k in {*saved, *model} if saved.get(k) != model.get(k))
    if changed:
        fields = ", ".join(
            f"--config.model.{k}={model.get(k)!r} (it holds {saved.get(k)!r})"
            for k in changed
        )
        raise ValueError(f"{workdir.root} holds a run of another head: {fields}; use a new --workdir")


def extract_features(run: Run) -> None:
    """Fill ``run.caches`` split by split from the feature store, extracting only the columns it lacks.

    The towers of missing columns are loaded (once, into ``run.frozen``) only when some column is missing;
    a run whose columns are all stored loads no tower. Writes ``<workdir>/features.json`` (the store
    entries and columns read) and logs whether the features were reused or extracted, and where.
    """
    variant = run.config.model.features
    missing = {split: features.missing_everywhere(plan) for split, plan in run.feature_plans.items()}
    needed = {c.name: c for columns in missing.values() for c in columns}.values()
    if needed and run.frozen is None:
        with run.timing("towers"):
            vision = [c.tower for c in needed if c.field != features.TEXT_FIELD]
            text = any(c.field == features.TEXT_FIELD for c in needed)
            place_towers(run, features.load_towers(run.towers_cfg, variant, vision=vision, text=text))
    extracted: dict[str, list[features.Column]] = {}
    for split, rows in run.splits.items():
        plan = run.feature_plans[split]
        positions = {(r.puzzle_id, r.instance_id): i for i, r in enumerate(rows)}

        def row_position(puzzle_ids, instance_ids, positions=positions):
            return np.asarray(
                [positions[(int(p), int(i))] for p, i in zip(puzzle_ids, instance_ids, strict=True)]
            )

        def extract(columns: list[features.Column], work_dir: pathlib.Path, split=split, rows=rows) -> None:
            towers = towers_for(run.frozen, columns)
            params = run.tower_params
            if towers is not run.frozen:  # the towers of the columns still missing here, a subset
                params = {"vision": {n: params["vision"][n] for n in towers.vision},
                          **({"text": params["text"]} if towers.text is not None else {})}  # fmt: skip
            features.extract_split(
                towers,
                functools.partial(
                    run.image_batches,
                    split,
                    shuffle=False,
                    num_epochs=1,
                    global_batch=run.config.eval_batch_size,
                    towers=towers,
                ),
                run.to_global,
                row_position,
                len(rows),
                work_dir,
                shard_batches=run.config.feature_shard_batches,
                params_sharding=jax.tree.map(lambda x: x.sharding, params),
                storage_dtype=run.config.get("feature_dtype", "float32"),
                name=split,
            )

        with run.timing(f"features/{split}") as counts:
            extracted[split] = features.fill_split(plan, extract)
            if extracted[split]:  # samples/s: the split's rows over the whole extraction, compiling included
                counts["samples"] = len(rows)
            run.caches[split] = plan.load()
    # the steps read the stored features: the towers' parameters leave the devices (and every run passes
    # the steps the same arguments, whether it extracted or not, so XLA's cache serves them all)
    run.tower_params = None
    if run.is_lead:
        features.write_record(run.workdir.feature_record, run.feature_store, run.feature_plans,
                              extracted)  # fmt: skip
        names = sorted({c.name for columns in extracted.values() for c in columns})
        if names:
            log.info("features: extracted %s into %s", ", ".join(names), run.feature_store)
        else:
            stored = ", ".join(c.name for c in run.feature_plans["train"].columns)
            log.info("features: reused the stored %s in %s (no tower loaded)", stored, run.feature_store)


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


# ----------------------------------------------------------------------------------------------------
# Members: several heads trained at once, vmapped over a leading axis of the train state.

# Names a member may not take: they are the group workdir's own entries.
RESERVED_NAMES = ("best_model", "checkpoints", "features", "synthetic", "tfds", "towers", "tensorboard")


@dataclasses.dataclass(frozen=True)
class Member:
    """One head of a group (:func:`train_members`): its name (the subdirectory of its workdir), its seed
    (initialisation and dropout), and the learning rate, weight decay and dropout rate it trains with
    (None: the config's ``optim.lr``, ``optim.weight_decay``, ``model.pdrop``)."""

    name: str
    seed: int
    lr: float | None = None
    weight_decay: float | None = None
    pdrop: float | None = None


def member_config(config: ml_collections.ConfigDict, member: Member) -> ml_collections.ConfigDict:
    """The single-run config that reproduces ``member``: ``seed``, ``optim.lr``, ``optim.weight_decay`` and
    ``model.pdrop`` set to the member's, and ``data_seed`` set to the group's data order explicitly (a
    member's seed varies initialisation and dropout, never the batches)."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.data_seed = data_seed(config)
    out.seed = int(member.seed)
    if member.lr is not None:
        out.optim.lr = float(member.lr)
    if member.weight_decay is not None:
        out.optim.weight_decay = float(member.weight_decay)
    if member.pdrop is not None:
        out.model.pdrop = float(member.pdrop)
    return out


def check_members(config: ml_collections.ConfigDict, members: Sequence[Member]) -> list[Member]:
    """The members as a list, or ValueError naming the member and the field that cannot be right."""
    members = list(members)
    if not members:
        raise ValueError("train_members needs at least one Member")
    names = [m.name for m in members]
    for m in members:
        if not isinstance(m, Member):
            raise ValueError(f"members: {m!r} is not a train.Member")
        if not m.name or m.name in (".", "..") or "/" in m.name or m.name in RESERVED_NAMES:
            raise ValueError(f"Member name {m.name!r} is not a plain directory name outside {RESERVED_NAMES}")
        if names.count(m.name) > 1:
            raise ValueError(f"Member name {m.name!r} is given {names.count(m.name)} times")
        if m.lr is not None and not float(m.lr) > 0:
            raise ValueError(f"Member {m.name!r}: lr={m.lr} must be > 0")
        if m.weight_decay is not None and config.optim.name != "adamw":
            raise ValueError(
                f"Member {m.name!r}: weight_decay={m.weight_decay}, but --config.optim.name="
                f"{config.optim.name!r} has no weight decay"
            )
        if m.pdrop is not None and config.model.get("head", "smarter") == "baseline" and m.pdrop != 0:
            raise ValueError(f"Member {m.name!r}: pdrop={m.pdrop}, but the baseline head has no dropout")
        if m.pdrop is not None and not 0.0 <= float(m.pdrop) < 1.0:
            raise ValueError(f"Member {m.name!r}: pdrop={m.pdrop} must lie in [0, 1)")
    return members


def member_runs(run: Run, members: Sequence[Member]) -> list[Run]:
    """Each member's :class:`Run`: the group's data, towers, caches and timing, with the member's resolved
    config (the group's data root, dataset and tower directories written out: no synthetic or tiny flags),
    workdir (``<workdir>/<name>``, created, its ``config.json`` written) and head config."""
    out = []
    for m in members:
        model_cfg = ml_collections.ConfigDict(run.model_cfg)
        model_cfg.pdrop = run.model_cfg.pdrop if m.pdrop is None else float(m.pdrop)
        config = member_config(run.config, m)
        # The group's data and towers, named explicitly: a single run of this config reads them where they
        # are instead of writing synthetic puzzles or tiny towers of its own (its check would refuse); copies.
        config.data = ml_collections.ConfigDict(run.data_cfg.to_dict())
        config.towers = ml_collections.ConfigDict(run.towers_cfg.to_dict())
        config.synthetic.enabled, config.towers.tiny = False, False
        member = dataclasses.replace(
            run,
            config=config,
            data_cfg=config.data,
            towers_cfg=config.towers,
            workdir=run.workdir.member(m.name),
            model_cfg=model_cfg,
            model=reasoner.build(model_cfg),
        )
        member.workdir.root.mkdir(parents=True, exist_ok=True)
        write_run_config(member)
        out.append(member)
    return out


def member_hparams(runs: Sequence[Run]) -> dict[str, np.ndarray]:
    """The members' lr, weight decay and dropout rate, float32 [N] each (what ``member_step`` takes)."""
    return {
        "lr": np.asarray([r.config.optim.lr for r in runs], np.float32),
        "weight_decay": np.asarray([r.config.optim.weight_decay for r in runs], np.float32),
        "pdrop": np.asarray([r.model_cfg.pdrop for r in runs], np.float32),
    }


def take(tree, i: int | None):
    """Member ``i`` of a stacked tree; the tree itself where ``i`` is None (a single run)."""
    return tree if i is None else jax.tree.map(lambda x: x[i], tree)


# ----------------------------------------------------------------------------------------------------
# Evaluation.


def host_params(params) -> Any:
    """A host copy of replicated parameters (each process holds all of them); numpy leaves as they are."""
    local = lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x  # noqa: E731
    return jax.tree.map(lambda x: np.asarray(local(x)), params)


def evaluate_split(run: Run, params, split: str, pred_fn, baselines: bool = True) -> dict:
    """``metrics.evaluate_split`` of ``params`` on a split (every example once), with (``baselines``) its
    greedy and chance baselines from the training split; a transient progress bar while it runs."""
    return evaluate_members(run, params, split, pred_fn, baselines, stacked=False)[0]


def evaluate_members(
    run: Run, params, split: str, pred_fn, baselines: bool = True, *, stacked: bool = True
) -> list[dict]:
    """:func:`evaluate_split` of every member of stacked ``params`` in one pass over the split: ``pred_fn``
    gives [N, B, K] per batch (``make_pred_fn(run, stacked=True)``). One result per member; a single
    unstacked ``params`` (``stacked=False``, ``pred_fn`` giving [B, K]) is the one-member case."""
    outs = {k: [] for k in ("preds", *EVAL_FIELDS)}
    batches = run.batches(split, shuffle=False, num_epochs=1, global_batch=run.config.eval_batch_size)
    num_batches = math.ceil(len(run.splits[split]) / run.config.eval_batch_size)
    progress = console.Progress(split, num_batches, "batches", leave=False, enabled=run.is_lead)
    for batch in progress.iterate(batches):
        gbatch = run.to_global(batch)
        preds = features.host_value(pred_fn(params, gbatch, run.tower_params))
        outs["preds"].append(preds if stacked else preds[None])
        for k in EVAL_FIELDS:
            outs[k].append(features.host_value(gbatch[k]))
    a = {k: np.concatenate(v, axis=1 if k == "preds" else 0) for k, v in outs.items()}
    return [
        metrics.evaluate_split(
            preds,
            a,
            run.num_classes,
            train_labels=run.train_labels if baselines else None,
            mask=a["mask"].astype(bool),
            skills=run.skills,
        )
        for preds in a["preds"]
    ]


def export_best(run: Run, params) -> None:
    """Replace ``<workdir>/best_model`` (a reasoner model dir) with ``params``, never half-written."""
    best = run.workdir.best_model
    if run.is_lead:  # every process holds all the (replicated) parameters: one file, one writer
        tmp = run.workdir.staging(best)
        shutil.rmtree(tmp, ignore_errors=True)
        reasoner.save(tmp, run.model_cfg, host_params(params))
        shutil.rmtree(best, ignore_errors=True)
        tmp.rename(best)
    multihost_utils.sync_global_devices("best model: written")  # no process reads it before


# ----------------------------------------------------------------------------------------------------
# The loop.


def checkpoint_rows(model_cfg: ml_collections.ConfigDict, opt_state) -> tuple[int, ...] | None:
    """The ``im_encoder`` rows a train checkpoint holds (sorted puzzle ids), or None for all 102.

    With the row-sparse optimiser the rows of puzzles outside the run keep their initial values for ever,
    so checkpoints hold the run's rows only (``presence.encoder_rows``; a 3-member smoke group's 104 MB
    become 20 MB) and a restore writes them into the freshly initialised state, which holds the others.
    Model dirs (``best_model/``) always hold all 102, the reference's layout."""
    return presence.encoder_rows(model_cfg) if optim.skips_absent_rows(opt_state) else None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Train, validate every epoch, test the best checkpoint; resumable from ``workdir``.

    Returns the results (also written to ``<workdir>/results.json``, with ``curves.png`` and the test
    plots beside it), or ``{"stopped_at_step": n}`` when a SIGTERM asked the run to save and stop. What XLA
    compiled or loaded from the compilation cache meanwhile is in ``results["xla"]``.
    """
    with summaries.CompileLog() as compiles:
        return _train_and_evaluate(config, Workdir(workdir), compiles)[0]


def train_members(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    members: Sequence[Member],
    *,
    plots: bool = True,
    label: str = "",
    stop: threading.Event | None = None,
    features_ready: threading.Event | None = None,
) -> dict[str, dict]:
    """Train the ``members`` at once (one jitted step, ``jax.vmap`` over their stacked train states) on the
    same batches: the data order of ``config`` (``data_seed``), each member's own seed (initialisation,
    dropout), learning rate, weight decay and dropout rate. Each member equals the single run of its
    resolved config (``<workdir>/<name>/config.json``): same losses, same test metrics.

    ``<workdir>`` holds the group (its ``config.json`` and the stacked checkpoints: a rerun resumes from
    them); ``<workdir>/<name>/`` is each member's complete run workdir (``best_model/``, ``results.json``,
    ``log.jsonl``, ``tensorboard/``, with ``plots`` its test plots and ``curves.png``). Early stopping is
    per member: a member whose patience runs out keeps its state while the others train on.

    For groups trained side by side in threads (``smartvlm_jax.sweep``): ``label`` names the group in its
    epoch progress ("no_qf: epoch 3/12"); ``stop``, when given, replaces the SIGTERM handler this function
    otherwise installs (which only the main thread may): once set, the group saves at its next step and
    stops; ``features_ready`` is set once the group's features are in the store (or it reads none).

    Returns member name -> its results (as :func:`train_and_evaluate`'s), or -> ``{"stopped_at_step": n}``
    when a SIGTERM (or ``stop``) stopped the group. ValueError names a bad member (name, lr, weight decay,
    pdrop) or a workdir whose checkpoints hold other members.
    """
    members = check_members(config, members)
    with summaries.CompileLog() as compiles:
        results = _train_and_evaluate(config, Workdir(workdir), compiles, members, plots=plots, label=label,
                                      stop=stop, features_ready=features_ready)  # fmt: skip
    return {m.name: r for m, r in zip(members, results, strict=True)}


def _train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: Workdir,
    compiles: summaries.CompileLog,
    members: Sequence[Member] | None = None,
    plots: bool = True,
    label: str = "",
    stop: threading.Event | None = None,
    features_ready: threading.Event | None = None,
) -> list[dict]:
    """The loop of a single run (``members`` None: an unstacked state) or of a group (a state stacked on
    a leading member axis, a vmapped step); one result per member (one for a single run)."""
    workdir.root.mkdir(parents=True, exist_ok=True)
    run = setup(config, workdir)
    run.compiles = compiles
    if config.cache_features:
        extract_features(run)
    if features_ready is not None:
        features_ready.set()
    stacked = members is not None
    runs = member_runs(run, members) if stacked else [run]
    members_index = list(range(len(runs))) if stacked else [None]  # what `take` picks per member

    global_batch = config.batch_size
    steps_per_epoch = math.ceil(len(run.splits["train"]) / global_batch)
    total_steps = config.num_epochs * steps_per_epoch
    train_iter = iter(
        run.batches("train", shuffle=True, num_epochs=config.num_epochs, global_batch=global_batch)
    )
    schedule = optim.learning_rate_schedule(config.optim, total_steps)
    tx = optim.make_optimizer(config.optim, total_steps)  # its state's structure is every member's
    repl = parallel.replicated(run.mesh)
    data_sharding = parallel.batch_sharding(run.mesh)
    towers = None if config.cache_features else run.frozen

    def init_state(rng):
        init_rng, state_rng = jax.random.split(rng)
        inputs = reasoner.checkpoint.example_inputs(run.model_cfg, batch=1)
        params = run.model.init({"params": init_rng, "dropout": init_rng}, *inputs)["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.key_data(state_rng),
        )

    if stacked:  # each member initialised from its own seed, as its single run is
        init_fn = jax.vmap(lambda seed: init_state(jax.random.key(seed)))
        init_arg = jnp.asarray([r.config.seed for r in runs], jnp.uint32)
    else:
        init_fn, init_arg = init_state, jax.random.key(config.seed)
    traced_init = jax.jit(init_fn, out_shardings=repl).trace(init_arg)  # the head is small: replicated
    abstract_state = traced_init.out_info  # (one trace gives the shapes and the initialiser)
    state_shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
    state = traced_init.lower().compile()(init_arg)
    if run.is_lead:  # one member's parameter shapes (a stacked leaf's without its member axis)
        member = lambda x: jax.ShapeDtypeStruct(x.shape[stacked:], x.dtype)  # noqa: E731
        shapes = jax.tree.map(member, abstract_state.params)
        num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
        log.info("%sreasoner head: %s parameters%s", f"{label}: " if label else "", f"{num_params:,}",
                 f" x {len(runs)} members" * stacked)  # fmt: skip
        log.debug("reasoner parameters:\n%s", reasoner.param_summary(shapes))

    kept = checkpoint_rows(run.model_cfg, abstract_state.opt_state)
    layout = None if kept is None else list(kept)  # the checkpoints' rows, as their meta records them
    per_member = jax.vmap if stacked else lambda f, **_: f
    to_saved = (lambda x: x) if kept is None else jax.jit(
        per_member(functools.partial(presence.take_encoder_rows, rows=kept))
    )
    ckpt_dir = workdir.checkpoints
    manager = ocp.CheckpointManager(
        ckpt_dir,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=config.keep_checkpoints,
            create=True,
            # Process 0 makes a save's directories; with several processes they must exist before the
            # others write their parts (grain's per-process iterator files), so not in the background.
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
        ),
        item_names=("state", "data", "meta"),
    )

    def fresh_meta() -> dict:
        return {
            "epoch": 0, "best_val_S_acc": -1.0, "best_epoch": 0, "epochs_without_improvement": 0, "val": []
        }  # fmt: skip

    # A single run's meta is its one member's; a group's holds each member's under "members".
    if stacked:
        meta = {
            "epoch": 0,
            "member_specs": [dataclasses.asdict(m) for m in members],
            "members": {m.name: fresh_meta() for m in members},
        }
    else:
        meta = fresh_meta()
    meta["encoder_rows"] = layout
    if manager.latest_step() is not None:
        fresh = state
        saved_meta = manager.restore(
            manager.latest_step(), args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        ).meta
        if stacked and saved_meta.get("member_specs") != meta["member_specs"]:
            # the stacked state restores by position: the same members, or a clear error
            raise ValueError(
                f"{ckpt_dir} holds the checkpoints of other members ({saved_meta.get('member_specs')}), "
                f"not {meta['member_specs']}: use a new workdir"
            )
        saved_rows = saved_meta.get("encoder_rows")  # absent in checkpoints of every row (older ones too)
        if saved_rows is not None and saved_rows != layout:
            raise ValueError(
                f"{ckpt_dir} holds the image-encoder rows {saved_rows} of the row-sparse optimiser, but this "
                f"run trains {layout or 'every row'} (--config.optim.skip_absent_rows="
                f"{config.optim.get('skip_absent_rows')}): use a new workdir"
            )
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            abstract_state if saved_rows is None else jax.eval_shape(to_saved, abstract_state),
            state_shardings,
        )
        restored = manager.restore(
            manager.latest_step(),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                data=grain.checkpoint.CheckpointRestore(train_iter),
                meta=ocp.args.JsonRestore(),
            ),
        )
        state, meta = restored.state, restored.meta
        if saved_rows is not None:  # the run's rows into the initial state, which has every other row
            put = per_member(functools.partial(presence.put_encoder_rows, rows=kept))
            state = jax.jit(put, out_shardings=state_shardings, donate_argnums=0)(fresh, restored.state)
        meta["encoder_rows"] = layout  # what the next saves hold
        log.info("resumed from %s at step %d", ckpt_dir, manager.latest_step())
    metas = [meta["members"][m.name] for m in members] if stacked else [meta]  # each member's, in place
    # Train metrics since the last logged step: logs average fixed windows of log_every_steps steps, so a
    # resumed run logs what the uninterrupted one does (the window's part before the resume is in meta).
    pending = window_from_json(meta.get("train_window"))

    timing = run.timing

    last_save_time = time.perf_counter()
    # Member index -> its new best parameters (host copies), exported with the next save: a checkpoint's
    # meta names each member's best epoch, and its best_model/ then holds that epoch's parameters. (A run
    # resumed from an older checkpoint redoes the same epochs, and exports the same bests.)
    unexported: dict[int, Any] = {}

    def save(step: int) -> None:
        nonlocal last_saved, last_save_time
        last_saved, last_save_time = step, time.perf_counter()
        with timing("checkpoint") as counts:
            counts["saves"] = 1
            for i, params in unexported.items():
                export_best(runs[i], params)
            unexported.clear()
            meta["train_window"] = window_to_json(pending)
            manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(to_saved(state)),
                    data=grain.checkpoint.CheckpointSave(train_iter),
                    meta=ocp.args.JsonSave(meta),
                ),
                force=True,
            )

    def active() -> np.ndarray:
        """Which members still train: their patience has not run out. bool [N]."""
        return np.asarray([m["epochs_without_improvement"] <= config.early_stop_patience for m in metas])

    def step_args(batch) -> tuple:
        """The step's arguments after the state: batch and tower params (and the members' hparams and
        which are active)."""
        args = (batch, run.tower_params if towers else None)
        return (*args, hparams, jnp.asarray(active())) if stacked else args

    def compile_steps(batch: Mapping[str, jax.Array]) -> float:
        """Compile the train and eval steps ahead of time (jax AOT); the jitted calls reuse the
        executables. Returns the seconds spent, which the training stage leaves out."""
        start = time.perf_counter()
        with timing("compile/train_step"):
            step_fn.lower(state, *step_args(batch)).compile()
        eval_batch = {
            k: jax.ShapeDtypeStruct((config.eval_batch_size, *v.shape[1:]), v.dtype, sharding=v.sharding)
            for k, v in batch.items()
        }
        with timing("compile/eval_step"):
            pred_fn.lower(state.params, eval_batch, run.tower_params).compile()
        return time.perf_counter() - start

    if stacked:
        hparams = member_hparams(runs)
        step_fn = jax.jit(
            jax.vmap(
                functools.partial(
                    member_step,
                    model=run.model,
                    model_cfg=run.model_cfg,
                    optim_cfg=config.optim,
                    total_steps=total_steps,
                    towers=towers,
                ),
                in_axes=(0, None, None, 0, 0),  # the batch and the towers are the members' shared inputs
            ),
            in_shardings=(state_shardings, data_sharding, None, repl, repl),
            out_shardings=(state_shardings, repl),
            donate_argnums=(0,),
        )
    else:
        step_fn = jax.jit(
            functools.partial(
                train_step, model=run.model, model_cfg=run.model_cfg, tx=tx, schedule=schedule, towers=towers
            ),
            in_shardings=(state_shardings, data_sharding, None),
            out_shardings=(state_shardings, repl),
            donate_argnums=(0,),
        )
    pred_fn = make_pred_fn(run, stacked=stacked)

    writers = [summaries.RunWriter(r.workdir, enabled=run.is_lead) for r in runs]
    step = int(jax.device_get(state.step).max())  # a group's: its members that still train are all there
    own_handler = stop is None  # (a caller that passes `stop` handles the signal: threads cannot)
    stop_requested = threading.Event() if own_handler else stop
    if own_handler:
        previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop_requested.set())
    last_saved = step
    max_steps = total_steps if config.max_steps < 0 else min(total_steps, config.max_steps)
    compiled = False
    epoch_bar: console.Progress | None = None  # the current epoch's progress
    losses: list[float] = []  # this epoch's step losses (the members' mean; the bar shows their mean)
    unread: list[tuple[int, np.ndarray, TrainMetrics]] = []  # (step, members on, metrics) not yet read

    last_read = time.perf_counter()

    def read_metrics() -> None:
        """Fetch the metrics of the steps dispatched since the last read in one transfer, add them to the
        log window (merged on the host: merging on the device would wait for each step), write each logged
        step's window (the steps between reads are logged at their own step, as if read at once) and add
        the losses to the epoch's; FloatingPointError at the first non-finite loss of a training member."""
        nonlocal pending, last_read
        for (at, trained, _), fetched in zip(unread, jax.device_get([u[2] for u in unread]), strict=True):
            pending = fetched if pending is None else pending.merge(fetched)
            member_losses = np.atleast_1d(np.asarray(fetched.loss.compute()))
            for i in np.flatnonzero(trained):
                if not math.isfinite(member_losses[i]):
                    latest = manager.latest_step()
                    where = f" (member {members[i].name!r})" if stacked else ""
                    good = ckpt_dir / str(latest) if latest is not None else "none (no checkpoint saved yet)"
                    raise FloatingPointError(
                        f"loss is {member_losses[i]} at step {at}{where}; last good checkpoint: {good}"
                    )
            losses.append(float(member_losses[trained].mean()))
            if at % config.log_every_steps == 0 or at == max_steps:
                for i in np.flatnonzero(trained):  # each member's own window (clu computes unstacked ones)
                    scalars = take(pending, members_index[i]).compute()
                    writers[i].write_scalars(at, scalars, prefix="train/")
                if at % config.log_every_steps == 0:  # a last, partial log keeps its window for a resume
                    pending = None
        unread.clear()
        last_read = time.perf_counter()

    def save_if_due(step: int) -> None:
        """A routine save (an epoch's end, every ``checkpoint_every_steps``): skipped while the last save
        is younger than ``checkpoint_min_interval_secs``. A resume from an older checkpoint redoes the same
        steps to the same state (and the same best-model exports), so a skipped save loses only time; each
        Orbax save costs ~0.1 s, which short epochs (a sweep's rows) paid every fraction of a second."""
        young = time.perf_counter() - last_save_time < config.get("checkpoint_min_interval_secs", 0.0)
        if parallel.any_process(not young):  # every process saves, or none (a save has barriers)
            save(step)

    try:
        while step < max_steps and active().any():
            if epoch_bar is None:
                epoch_bar = epoch_progress(run, step, steps_per_epoch, max_steps, label)
                losses = []
            start = time.perf_counter()  # the training stage: batch, step and loss, compilation left out
            batch = run.to_global(next(train_iter))
            if not compiled:
                epoch_bar.status("compiling the train and eval steps")
            compile_s = 0.0 if compiled else compile_steps(batch)
            compiled = True
            on = active()  # the members this step trains (the others' states stay as they were)
            state, step_metrics = step_fn(state, *step_args(batch))
            step += 1
            unread.append((step, on, step_metrics))
            # Steps run asynchronously: the host reads their metrics (and waits for them) where it validates
            # or saves, and at a logged step only when the last read is METRICS_READ_SECS old (each read
            # drains the queue of dispatched steps: reading every few short steps left the cores idle).
            every = (steps_per_epoch, config.checkpoint_every_steps)
            due = step == max_steps or any(step % n == 0 for n in every)
            logs = step % config.log_every_steps == 0
            if due or (logs and time.perf_counter() - last_read >= METRICS_READ_SECS):
                read_metrics()
            timing.add("train", time.perf_counter() - start - compile_s, steps=1)
            # the step that compiled is left out of the rate and ETA
            postfix = f"loss {np.mean(losses):.4g}" if losses and not unread else None
            epoch_bar.update(1, warmup=compile_s > 0, postfix=postfix)
            if step % steps_per_epoch == 0:
                epoch = step // steps_per_epoch
                epoch_bar.status(f"loss {np.mean(losses):.4g}, validating")
                with timing("eval"):
                    vals = evaluate_members(
                        run, state.params, "val", pred_fn, baselines=False, stacked=stacked
                    )
                meta["epoch"] = epoch
                new_best = []
                params_on_host = None  # one transfer of the (stacked) parameters for this epoch's bests
                for i in np.flatnonzero(on):  # a stopped member's val is the one it stopped with
                    val, member_meta = vals[i], metas[i]
                    scalars = {k: val[k] for k in ("S_acc", "O_acc", "err")}
                    writers[i].write_scalars(step, scalars, prefix="val/")
                    member_meta["epoch"] = epoch
                    member_meta["val"].append(reports.to_json_safe(val))
                    if val["S_acc"] > member_meta["best_val_S_acc"]:
                        member_meta.update(
                            best_val_S_acc=val["S_acc"], best_epoch=epoch, epochs_without_improvement=0
                        )
                        new_best.append(i)
                        with timing("checkpoint"):
                            if params_on_host is None:
                                params_on_host = host_params(state.params)
                            # copies: the host arrays may share the buffers the next step is donated
                            unexported[i] = jax.tree.map(np.array, take(params_on_host, members_index[i]))
                    else:
                        member_meta["epochs_without_improvement"] += 1
                if stacked:
                    now = active()
                    stopped = [m.name for i, m in enumerate(members) if on[i] and not now[i]]
                    epoch_bar.close(members_summary(losses, members, metas, on, new_best, stopped))
                else:
                    epoch_bar.close(epoch_summary(losses, vals[0], bool(new_best)))
                epoch_bar = None
                save_if_due(step)
            elif step % config.checkpoint_every_steps == 0:
                save_if_due(step)
            # Every process must stop at the same step, or one waits in the save's barriers for ever.
            if parallel.any_process(stop_requested.is_set()):
                read_metrics()
                if epoch_bar is not None:  # (None: the signal came as an epoch ended)
                    epoch_bar.close(epoch_summary(losses) + ", stopped by SIGTERM")
                log.info("%sSIGTERM: saving step %d and stopping", f"{label}: " if label else "", step)
                if last_saved != step:
                    save(step)
                manager.wait_until_finished()
                return [{"stopped_at_step": step} for _ in runs]
        if epoch_bar is not None:  # max_steps ended an epoch early
            epoch_bar.close(epoch_summary(losses))
        if last_saved != step:
            save(step)
        with timing("checkpoint"):
            manager.wait_until_finished()
    finally:
        if own_handler:
            signal.signal(signal.SIGTERM, previous_handler)
        for writer in writers:
            writer.close()

    member_steps = np.atleast_1d(np.asarray(jax.device_get(state.step)))  # a stopped member's are its own
    for r, i, member_meta in zip(runs, members_index, metas, strict=True):
        if not r.workdir.best_model.exists():  # max_steps ended it before an epoch did
            with timing("checkpoint"):
                export_best(r, take(state.params, i))
        if run.is_lead and plots:
            with timing("plots"):
                series = summaries.read_log(r.workdir.log)
                reports.plot_curves(series, steps_per_epoch, int(member_meta["best_epoch"]), r.workdir.curves)
    return test_best(runs, pred_fn, metas, [int(s) for s in member_steps], stacked=stacked, plots=plots,
                     label=label)  # fmt: skip


def epoch_progress(
    run: Run, step: int, steps_per_epoch: int, max_steps: int, label: str = ""
) -> console.Progress:
    """The progress of the epoch that ``step`` (steps done) is in: "epoch 3/12" (after "``label``: "), its
    steps (fewer where ``max_steps`` ends it), the steps done already when a run resumes inside it."""
    epoch = step // steps_per_epoch + 1
    first = (epoch - 1) * steps_per_epoch
    total = min(steps_per_epoch, max_steps - first)
    desc = f"{label + ': ' if label else ''}epoch {epoch}/{run.config.num_epochs}"
    return console.Progress(
        desc, total, "steps", initial=step - first, warmup_name="compiling", enabled=run.is_lead
    )


def epoch_summary(losses: list[float], val: Mapping | None = None, new_best: bool = False) -> str:
    """What an epoch's bar ends with: "loss 1.679, val S_acc 14.4 %, O_acc 21.6 %, new best"."""
    text = f"loss {np.mean(losses):.4g}" if losses else "no step"
    if val is not None:
        text += f", val S_acc {100 * val['S_acc']:.1f} %, O_acc {100 * val['O_acc']:.1f} %"
    return text + (", new best" if new_best else "")


def members_summary(
    losses: list[float],
    members: Sequence[Member],
    metas: Sequence[Mapping],
    trained: np.ndarray,
    new_best: Sequence[int],
    stopped: Sequence[str],
) -> str:
    """What a group's epoch bar ends with: "loss 1.679 (mean of 3 members), best val S_acc 14.4 % (seed1),
    new best: seed0, seed1; patience out: lr1e-3" (``trained``: bool [N], the members this epoch trained;
    ``new_best``: their indices; ``stopped``: the names whose patience ran out at this epoch)."""
    text = f"loss {np.mean(losses):.4g} (mean of {int(trained.sum())} members)" if losses else "no step"
    best = max(range(len(members)), key=lambda i: metas[i]["best_val_S_acc"])
    text += f", best val S_acc {100 * metas[best]['best_val_S_acc']:.1f} % ({members[best].name})"
    if new_best:
        text += ", new best: " + ", ".join(members[i].name for i in new_best)
    if stopped:
        text += "; patience out: " + ", ".join(stopped)
    return text


def best_params(run: Run):
    _, best_vars, _ = reasoner.load(run.workdir.root)
    return jax.device_put(best_vars["params"], parallel.replicated(run.mesh))


def make_pred_fn(run: Run, stacked: bool = False):
    """The jitted predict step: params -> [B, K]; ``stacked``: members' params [N, ...] -> [N, B, K] (vmapped
    over the params only: one pass over the batch answers for every member)."""
    towers = None if run.config.cache_features else run.frozen
    fn = functools.partial(predict_step, model=run.model, model_cfg=run.model_cfg, towers=towers)
    return jax.jit(jax.vmap(fn, in_axes=(0, None, None)) if stacked else fn)


def test_best(
    runs: Sequence[Run],
    pred_fn,
    metas: Sequence[Mapping],
    steps: Sequence[int],
    *,
    stacked: bool,
    plots: bool,
    label: str = "",
) -> list[dict]:
    """Evaluate each run's ``<workdir>/best_model`` on the test split (a group's stacked: one pass); write
    each results.json (and with ``plots`` the test plots). A single run prints the table and the summary of
    where everything went (``reports.format_summary``); a group one line per member (its name after
    "``label``/")."""
    run = runs[0]
    with run.timing("eval"):
        params = [best_params(r) for r in runs]
        if stacked:
            params = jax.tree.map(lambda *xs: jnp.stack(xs), *params)
        tests = evaluate_members(run, params if stacked else params[0], "test", pred_fn, stacked=stacked)
    out = []
    for r, test, meta, member_steps in zip(runs, tests, metas, steps, strict=True):
        best_epoch = int(meta["best_epoch"])
        results = {
            "val": meta["val"][best_epoch - 1] if best_epoch > 0 else None,
            "test": test,
            "best_epoch": best_epoch,
            "epochs": int(meta["epoch"]),
            "steps": member_steps,
        }
        if r.is_lead and plots:
            with r.timing("plots"):
                reports.plot_results(test, r.workdir, prefix="test")
        results["timing"] = r.timing.record()
        if r.compiles is not None:
            cache_dir = str(r.compile_cache) if r.compile_cache else None
            results["xla"] = {**r.compiles.record(), "cache_dir": cache_dir}
        if r.is_lead:
            reports.write_results(r.workdir, results)
            if not stacked:
                print(reports.format_table(test, r.skills, r.names))
                print()
                print(reports.format_summary(results, r.workdir))
        out.append(results)
    if stacked and run.is_lead:
        names = [f"{label}/{r.workdir.root.name}" if label else r.workdir.root.name for r in runs]
        width = max(len(name) for name in names)
        for name, r, results in zip(names, runs, out, strict=True):
            print(
                f"{name:<{width}}  test S_acc {100 * results['test']['S_acc']:5.1f} %, "
                f"O_acc {100 * results['test']['O_acc']:5.1f} %  (best epoch {results['best_epoch']} of "
                f"{results['epochs']}, val S_acc {100 * (results['val'] or {}).get('S_acc', 0.0):.1f} %)  "
                f"{r.workdir.results}"
            )
    return out


def evaluate_workdir(workdir: str | pathlib.Path, split: str = "test") -> dict:
    """Re-evaluate a finished (or interrupted) run's best model on a split, from its workdir alone.

    Reads ``<workdir>/config.json`` (the resolved run config), reuses the feature cache, and merges the
    split's metrics (with the greedy and chance baselines) into ``results.json``. Returns them with the
    console table under "table".
    """
    workdir = Workdir(workdir)
    if not workdir.config_file.is_file():
        raise FileNotFoundError(
            f"{workdir.config_file} does not exist: is {workdir.root} a training workdir?"
        )
    saved = json.loads(workdir.config_file.read_text())
    if not (isinstance(saved, dict) and "towers" in saved and "optim" in saved):
        raise ValueError(
            f"{workdir.root} is a model dir, not a training workdir (its config.json is a head's): pass the "
            "training run's directory, or answer with predict --checkpoint"
        )
    config = ml_collections.ConfigDict(saved)
    run = setup(config, workdir)
    if config.cache_features:
        extract_features(run)
    result = evaluate_split(run, best_params(run), split, make_pred_fn(run))
    table = reports.report(workdir, split, result, skills=run.skills, names=run.names) if run.is_lead else ""
    return {**result, "table": table}
