"""Set-up: the config checked, the data prepared, the towers named, the mesh and the head built.

:func:`setup` returns a :class:`Run`, which nothing changes afterwards: what comes later (the features,
the train state, the checkpoints) has owners of its own (``inputs.Inputs``, ``checkpointer.Checkpointer``).
"""

import dataclasses
import functools
import json
import logging
import pathlib
from collections.abc import Callable, Iterable, Mapping

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from smartvlm_jax import console, features, fileio, parallel, reasoner, sources, summaries, variants
from smartvlm_jax.data import pipeline, smart101
from smartvlm_jax.train import checks
from smartvlm_jax.train.signals import Stopped, StopSignal
from smartvlm_jax.workdir import Workdir, user_cache_dir

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Run:
    """What the rest of a run needs, resolved from the config once."""

    config: ml_collections.ConfigDict  # as given, with checks.upgrade_config's fields
    workdir: Workdir
    mesh: jax.sharding.Mesh
    data_cfg: ml_collections.ConfigDict  # config.data resolved: root, puzzle_ids, data_dir
    splits: dict[str, list[smart101.Row]]
    num_classes: dict[int, int]  # puzzle id -> C_p
    towers_cfg: ml_collections.ConfigDict  # config.towers with the tiny towers' directories written in
    model_cfg: ml_collections.ConfigDict  # config.model with the data's puzzles, classes and widths
    model: object  # the Flax head
    timing: summaries.StageTimes
    # each puzzle's skill type and name as the data root describes them (smart101.read_puzzle_info)
    puzzle_info: dict[int, smart101.PuzzleInfo]
    compile_cache: pathlib.Path | None = None  # XLA's persistent compilation cache in use (None: off)
    compiles: summaries.CompileLog | None = None  # what XLA compiled or loaded, when recorded
    # cache_features: where the store is, and each split's entry and the columns the variant reads
    feature_store: pathlib.Path | None = None
    feature_plans: Mapping[str, features.SplitPlan] = dataclasses.field(default_factory=dict)
    # the data root's and the towers' digests ({field: {"path", "digest"}}; smartvlm_jax.sources)
    sources: Mapping[str, dict] = dataclasses.field(default_factory=dict)

    @functools.cached_property
    def train_labels(self) -> dict[str, np.ndarray]:
        """The training split's label arrays, for the greedy baseline (built once per run)."""
        return smart101.label_arrays(self.splits["train"])

    @property
    def is_lead(self) -> bool:
        """Whether this process writes the run's shared files (process 0)."""
        return jax.process_index() == 0

    @property
    def skills(self) -> dict[int, str]:
        return {pid: info.type for pid, info in self.puzzle_info.items()}

    @property
    def names(self) -> dict[int, str]:
        return {pid: info.name for pid, info in self.puzzle_info.items()}

    def to_global(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """A host batch as global arrays sharded over the mesh's batch axes."""
        return pipeline.global_batch(batch, parallel.batch_sharding(self.mesh))


def data_seed(config: ml_collections.ConfigDict) -> int:
    """The seed of the data order: ``config.data_seed``, or ``config.seed`` where it is -1."""
    seed = int(config.data_seed)
    return int(config.seed) if seed < 0 else seed


def checked(config: ml_collections.ConfigDict, workdir: Workdir) -> tuple[ml_collections.ConfigDict, Mesh]:
    """(``config`` upgraded (``checks.upgrade_config``), its device mesh) once every check that needs no
    data has passed: the config's fields, the tiny-tower flag, the batch sizes against the mesh. Writes
    nothing; ValueError or FileNotFoundError naming the flag at fault."""
    config = checks.upgrade_config(config)
    checks.check_config(config)
    checks.check_tiny_towers(config, workdir)
    checks.check_not_a_sweep(workdir)
    mesh = parallel.make_mesh(config.mesh.fsdp, parallel.mesh_devices(config.mesh.num_devices))
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh, "--config.eval_batch_size")
    return config, mesh


def setup(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path | Workdir,
    compiles: summaries.CompileLog | None = None,
    stop: StopSignal | None = None,
    record: bool = True,
    head_ready: Callable[[Run], None] | None = None,
) -> Run:
    """The run of ``config`` in ``workdir``: data prepared, tiny towers built if asked, head built, feature
    plans made, the resolved config written to the workdir (which must exist; ``record`` False: not
    written, as when a finished run is re-evaluated). Loads no tower weights.

    ``head_ready`` is called with the run as soon as the head's shapes are known (the data's puzzles and
    classes, the towers' widths: from the tiny towers' configs before they are written), before the
    towers are built or digested and the feature plans made (that run's ``sources`` and feature fields
    are still empty): ``train.ahead`` starts compiling the run's programs there (issue 30).

    Raises ValueError or FileNotFoundError naming the flag at fault, before any work; ``Stopped`` when
    ``stop`` was requested while the data was being written or built."""
    workdir = Workdir(workdir)
    config, mesh = checked(config, workdir)
    compile_cache = parallel.enable_compile_cache(config.compile_cache_dir)
    log.info("XLA compilation cache: %s", compile_cache or "off (--config.compile_cache_dir='')")
    timing = summaries.StageTimes()
    with timing("dataset"):  # synthetic puzzles (if asked), rows and splits, the TFDS build
        data_cfg, rows, splits, num_classes = prepare_data(config, workdir, stop)
    towers_cfg = tower_dirs(config, workdir)
    model_cfg = ml_collections.ConfigDict(config.model)
    model_cfg.puzzle_ids = smart101.resolve_puzzle_ids(data_cfg.root, data_cfg.puzzle_ids)
    model_cfg.num_classes = [int(num_classes[p]) for p in model_cfg.puzzle_ids]
    # the towers' widths from their config files (a run on stored features loads no weights), or from the
    # tiny towers' configs, which are known before the towers are written
    tiny = tiny_tower_configs(config.model.variant) if towers_cfg.tiny else None
    model_cfg.vision_dim, model_cfg.text_dim = features.variant_dims(towers_cfg, config.model.variant, tiny)
    run = Run(
        config=config,
        workdir=workdir,
        mesh=mesh,
        data_cfg=data_cfg,
        splits=splits,
        num_classes=num_classes,
        towers_cfg=towers_cfg,
        model_cfg=model_cfg,
        model=reasoner.build(model_cfg),  # validates: an unknown variant names its field
        timing=timing,
        puzzle_info=smart101.read_puzzle_info(data_cfg.root),
        compile_cache=compile_cache,
        compiles=compiles,
    )
    if head_ready is not None:
        head_ready(run)
    with timing("towers"):  # tiny towers built, if asked; the data's and towers' digests
        prepare_towers(config, workdir, (r.question for r in rows))
        run_sources = sources.run_sources(data_cfg, towers_cfg, config.model.variant)
    if record:  # a resumed run: on the towers it was trained with (refused), the data it read (a warning)
        sources.check_run(
            workdir.root,
            run_sources,
            consequence="the dataset is rebuilt from them and training goes on with the rows as they are now",
            refuse_how="give the tower the run was trained with, or train in a new --workdir",
        )
    store, plans = None, {}
    if config.cache_features:
        with timing("features/fingerprint"):
            store = feature_store_dir(config, workdir)
            plans = plan_features(config, towers_cfg, data_cfg, splits, store, run_sources)
    run = dataclasses.replace(run, feature_store=store, feature_plans=plans, sources=run_sources)
    if record:
        write_run_config(run)
    return run


def prepare_data(config: ml_collections.ConfigDict, workdir: Workdir, stop: StopSignal | None = None):
    """Rows and splits of the run (writing synthetic puzzles first if asked) and the built TFDS dataset.
    ``stop``: raise ``Stopped`` between synthetic puzzles and before the build once a stop is requested
    (the puzzles are written to a staging folder renamed into place, so a stop leaves none half-written)."""
    from smartvlm_jax.data import build, synthetic

    data_cfg = ml_collections.ConfigDict(config.data)
    if config.synthetic.enabled:
        data_cfg.root = str(workdir.synthetic)
        if jax.process_index() == 0 and not workdir.synthetic.exists():
            ids = synthetic.resolve_ids(config.synthetic.puzzles or None)

            def written(_) -> None:
                progress.update(1)
                if stop is not None and stop.event.is_set():  # this process alone writes: no collective
                    raise Stopped(stop.reason, "the synthetic puzzles")

            try:
                with console.Progress("synthetic puzzles", len(ids), "puzzles") as progress:
                    with fileio.staged_dir(workdir.synthetic) as staging:  # a stop or a kill leaves no half
                        synthetic.write_dataset(
                            str(staging),
                            per_puzzle=config.synthetic.per_puzzle,
                            seed=config.synthetic.seed,
                            puzzle_ids=ids,
                            workers=config.synthetic.workers,
                            progress=written,
                        )
            except Stopped:
                pass  # every process learns of it together, below
        multihost_utils.sync_global_devices("synthetic data")
        if stop is not None:
            stop.check("the synthetic puzzles")
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
    if stop is not None:
        stop.check("the data build")
    if jax.process_index() == 0:
        build.build(
            root,
            data_cfg.data_dir,
            puzzle_ids,
            skip_bad_rows=data_cfg.skip_bad_rows,
            replace_how="train in a new --workdir, or give another --config.data.data_dir",
        )
    multihost_utils.sync_global_devices("tfds build")
    num_classes = smart101.num_classes(rows)
    splits = {s: smart101.split_rows(rows, s, data_cfg, num_classes) for s in SPLITS}
    log_splits(splits, data_cfg)
    return data_cfg, rows, splits, num_classes


def log_splits(splits: Mapping[str, list[smart101.Row]], data_cfg: ml_collections.ConfigDict) -> None:
    """Log each split's size and puzzles; ValueError naming the data config when a split is empty."""
    split_ids = {}
    for name, split_rows in splits.items():
        if not split_rows:
            raise ValueError(
                f"the {name} split is empty: --config.data.split_type={data_cfg.split_type!r}, "
                f"--config.data.ratio={tuple(data_cfg.ratio)}, --config.data.data_tot={data_cfg.data_tot} "
                "leave it no row (more instances per puzzle, or another ratio)"
            )
        split_ids[name] = sorted({r.puzzle_id for r in split_rows})
    sizes = ", ".join(f"{name} {len(split_rows)}" for name, split_rows in splits.items())
    ids = split_ids["train"]
    if all(other == ids for other in split_ids.values()):
        kind = data_cfg.split_type
        log.info("splits (%s): %s rows of %d puzzles: %s", kind, sizes, len(ids), id_ranges(ids))
    else:  # puzzle and few-shot splits hold different puzzles
        log.info("splits (%s): %s rows", data_cfg.split_type, sizes)
        for name, ids in split_ids.items():
            log.info("  %s: %d puzzles: %s", name, len(ids), id_ranges(ids))


def id_ranges(ids: Iterable[int]) -> str:
    """Sorted ids as compact ranges for a log line: [1, 2, 3, 7, 9, 10] -> "1-3, 7, 9-10"."""
    out: list[list[int]] = []
    for i in sorted(ids):
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in out)


def tower_dirs(config: ml_collections.ConfigDict, workdir: Workdir) -> ml_collections.ConfigDict:
    """``config.towers`` with the tiny towers' directories in the workdir named (where
    :func:`prepare_towers` writes them)."""
    towers_cfg = ml_collections.ConfigDict(config.towers)
    if towers_cfg.tiny:
        for name in tiny_tower_configs(config.model.variant):
            towers_cfg[name] = str(workdir.towers / name)
    return towers_cfg


def prepare_towers(config: ml_collections.ConfigDict, workdir: Workdir, questions: Iterable[str]) -> None:
    """The run's tiny random towers (and their tokenizer) built in the workdir, if it asks for them."""
    if not config.towers.tiny:
        return
    base = workdir.towers
    if jax.process_index() == 0 and not base.exists():
        with fileio.staged_dir(base) as staging:
            write_tiny_towers(staging, config.model.variant, questions, config.seed)
    multihost_utils.sync_global_devices("tiny towers")


def tiny_tower_configs(variant: str) -> dict[str, dict]:
    """Tower name -> the HF config of the tiny random tower a ``towers.tiny`` run of ``variant`` builds:
    the SMART baseline's ResNet + BERT, or DINOv2 + SigLIP (``towers.tiny_config``)."""
    from smartvlm_jax import towers as towers_lib

    baseline = variants.get(variant).head == "baseline"
    return {
        name: towers_lib.tiny_config(name)
        for name in (("resnet", "bert") if baseline else ("dinov2", "siglip"))
    }


def write_tiny_towers(out: pathlib.Path, variant: str, questions: Iterable[str], seed: int) -> None:
    """The tiny random towers of ``variant`` (:func:`tiny_tower_configs`) and their tokenizer in ``out``: the
    SMART baseline's ResNet + BERT (a whole-word vocabulary of the questions), or DINOv2 + SigLIP (a
    sentencepiece model trained on the questions)."""
    from smartvlm_jax import towers as towers_lib

    configs = tiny_tower_configs(variant)
    if "bert" in configs:
        bert_cfg = configs["bert"]
        vocab = towers_lib.write_wordpiece_vocab(sorted(questions), out / "tokenizer", bert_cfg["vocab_size"])
        towers_lib.create_random(out / "resnet", "resnet", configs["resnet"], seed=seed)
        towers_lib.create_random(out / "bert", "bert", bert_cfg, seed=seed + 1, tokenizer_model=vocab)
        return
    siglip_cfg = configs["siglip"]
    vocab_size = siglip_cfg["text_config"]["vocab_size"]
    lowered = sorted({q.lower() for q in questions})
    spm = towers_lib.train_sentencepiece(lowered, out / "tokenizer", vocab_size)
    towers_lib.create_random(out / "dinov2", "dinov2", configs["dinov2"], seed=seed)
    towers_lib.create_random(out / "siglip", "siglip", siglip_cfg, seed=seed + 1, tokenizer_model=spm)


def feature_store_dir(config: ml_collections.ConfigDict, workdir: Workdir) -> pathlib.Path:
    """Where the run's features are stored: ``config.feature_store``, or ``<workdir>/features`` when it is
    '' (opt-out) or when a multi-process job would use the default per-user cache, which other hosts do
    not see (a named store must be on a filesystem every host sees)."""
    store = config.feature_store
    if not store:
        return workdir.feature_store
    if jax.process_count() > 1 and pathlib.Path(store).absolute() == user_cache_dir("features"):
        log.warning(
            "features: %d processes and the per-user default store %s, which other hosts may not see: "
            "storing in %s (name a shared store with --config.feature_store)",
            jax.process_count(),
            store,
            workdir.feature_store,
        )
        return workdir.feature_store
    return pathlib.Path(store).absolute()


def plan_features(
    config: ml_collections.ConfigDict,
    towers_cfg: ml_collections.ConfigDict,
    data_cfg: ml_collections.ConfigDict,
    splits: Mapping[str, list[smart101.Row]],
    store: pathlib.Path,
    run_sources: Mapping[str, dict],
) -> dict[str, features.SplitPlan]:
    """Each split's store entry (keyed by its rows' fingerprint) and the columns of the run's variant
    (keyed by the towers' contents, dtypes and preprocessing; the digests ``run_sources`` holds are not
    computed again); reads no weights."""
    columns = features.variant_columns(
        towers_cfg,
        config.model.variant,
        storage_dtype=config.feature_dtype,
        image_side=int(data_cfg.get("image_side", smart101.IMAGE_SIDE)),
        memo_dir=store / "digests",
        digests={k.removeprefix("towers."): v["digest"] for k, v in sources.towers_only(run_sources).items()},
    )
    return {
        split: features.plan_split(store, split, smart101.rows_fingerprint(rows), len(rows), columns)
        for split, rows in splits.items()
    }


def write_run_config(run: Run) -> None:
    """``<workdir>/config.json``: the resolved run config; a workdir describes itself (predict, evaluate).
    Paths inside the workdir are stored relative to it (``Workdir.portable``), so the workdir can move;
    ``sources.json`` beside it holds the data root's and the towers' digests (:mod:`smartvlm_jax.sources`)."""
    if not run.is_lead:
        return
    resolved = ml_collections.ConfigDict(run.config)
    resolved.data = run.data_cfg
    resolved.towers = run.towers_cfg
    resolved.model = run.model_cfg
    portable = run.workdir.portable(json.loads(resolved.to_json_best_effort()))
    checks.check_same_head(run.workdir, portable["model"])
    for line in checks.changed_recipe(run.workdir, portable):
        log.warning("%s", line)
    fileio.write_json(run.workdir.config_file, portable, indent=2)
    sources.write(run.workdir.root, run.sources, base=run.workdir.root)
