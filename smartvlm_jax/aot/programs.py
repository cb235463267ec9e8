"""Every program a run would run, built for a compile target's mesh at the run's real shapes and shardings.

Nothing is loaded, extracted or trained: the towers are their configs' weight tables as
``jax.ShapeDtypeStruct`` s (tower directories named in the config are read for their ``config.json`` only;
empty fields take the released towers the paper uses, :data:`RELEASED`), the head is built for the data's
puzzles and class counts (or, with no data at hand, estimated from the shipped SMART-101 metadata), and the
train and predict steps are the trainer's own (``train.Group.steps``) with its shardings.

:func:`plan` returns a :class:`Plan`; each :class:`Program` of it lowers for any per-device batch, which is
how :mod:`smartvlm_jax.aot.report` finds the largest batch that fits.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from smartvlm_jax import assets, features, optim, parallel, puzzles, reasoner, summaries, variants
from smartvlm_jax import towers as towers_lib
from smartvlm_jax.aot.targets import Target
from smartvlm_jax.data import smart101
from smartvlm_jax.features import batches
from smartvlm_jax.towers import backends, hf, registry
from smartvlm_jax.towers import params as params_lib
from smartvlm_jax.towers.backends import xla
from smartvlm_jax.towers.preprocess import default_processor, from_processor_config
from smartvlm_jax.towers.released import RELEASED

DEFAULT_RELEASE = {
    "dinov2": "facebook/dinov2-base",
    "siglip": "google/siglip-base-patch16-224",
    "resnet": "microsoft/resnet-50",
    "bert": "bert-base-uncased",
}


@dataclasses.dataclass(frozen=True)
class Program:
    """One program of a run: ``lower(per_device_batch)`` -> ``jax.stages.Lowered``. ``batch`` is the run's
    own per-device batch; ``examples`` how many examples one call takes per device batch row (a tower pass
    is one example; the train step one too)."""

    name: str
    description: str
    batch: int
    lower: Callable[[int], Any]


@dataclasses.dataclass(frozen=True)
class Plan:
    """A run's programs for a target, and what the run's estimates need: the split sizes (rows), the
    epochs, the global batch sizes and where the head's class counts came from."""

    target: Target
    mesh: jax.sharding.Mesh
    programs: list[Program]
    rows: dict[str, int]
    num_epochs: int
    batch_size: int
    eval_batch_size: int
    classes_from: str
    towers: dict[str, str]  # tower name -> where its config came from
    attention: str  # the towers' attention formulation on the target (xla.ATTENTION_IMPLS)
    attention_note: str = ""  # why it is not the one a run on the target would use (cuDNN on GPU)


# ------------------------------------------------------------------------------------------ the towers


def tower_config(towers_cfg: ml_collections.ConfigDict, name: str) -> tuple[dict[str, Any], dict | None, str]:
    """(top-level HF config, processor settings or None, where from) of ``config.towers.<name>``: a tower
    directory (its config.json or towers.json only), a :data:`RELEASED` id, or for '' the released tower
    the paper uses; tiny towers' configs when ``towers.tiny``. ValueError naming the field otherwise."""
    if towers_cfg.tiny:
        return towers_lib.tiny_config(name), None, "tiny"
    value = towers_cfg.get(name, "") or DEFAULT_RELEASE[name]
    if value in RELEASED:
        return dict(RELEASED[value]), None, value
    by_basename = {key.rsplit("/", 1)[-1]: key for key in RELEASED}
    base = os.path.basename(os.path.normpath(value))
    if not os.path.isdir(value) and base in by_basename:  # a path on the cluster, named after its release
        return dict(RELEASED[by_basename[base]]), None, f"{by_basename[base]} (for {value}, absent here)"
    if not os.path.isdir(value):
        raise FileNotFoundError(
            f"--config.towers.{name}={value!r} is neither a directory nor a released tower {sorted(RELEASED)}"
        )
    if registry_converted(value):
        meta = towers_lib.store.read_meta(value)
        return meta["config"], None, value
    return hf.read_config(value), hf.read_processor(value), value


def registry_converted(path: str) -> bool:
    return towers_lib.store.is_converted(path)


def abstract_params(family: registry.Family, cfg: dict[str, Any], dtype: str) -> Any:
    """The part's prepared weights (q/k/v fused, nothing packed) as ShapeDtypeStructs: matmul kernels in
    ``dtype``, the rest float32 (``params.to_device``'s rule)."""
    target = params_lib.compute_dtype(dtype)
    flat = {
        key: jax.ShapeDtypeStruct(spec.shape, target if key.endswith(".kernel") else jnp.float32)
        for key, spec in family.specs(cfg).items()
    }
    return jax.eval_shape(lambda p: family.prepare(p, cfg, False), params_lib.unflatten(flat))


def abstract_tower(
    towers_cfg: ml_collections.ConfigDict, name: str, part: str, platform: str, impl: str | None = None
):
    """(Tower whose params are ShapeDtypeStructs, where its config came from) for ``part`` of tower
    ``name``, its attention formulation ``impl``, by default that of ``platform``."""
    top, processor, source = tower_config(towers_cfg, name)
    family, cfg = registry.part_config(top, part)
    params = abstract_params(family, cfg, towers_cfg.dtype)
    resizer = normalize = None
    if part == "vision":
        resizer, normalize = from_processor_config(processor or default_processor(family.kind, cfg))
    impl = impl or xla.impl_for(
        platform, params_lib.compute_dtype(towers_cfg.dtype), towers_cfg.get("attention", "xla")
    )
    tower = registry.Tower(
        kind=family.kind,
        part=part,
        model_type=str(top["model_type"]),
        config={**cfg, backends.IMPL_KEY: impl},
        params=params,
        dtype=towers_cfg.dtype,
        resizer=resizer,
        normalize=normalize,
        cpu_onednn=False,  # no CPU options or oneDNN packing in a program for another platform
    )
    return tower, source


def abstract_towers(
    towers_cfg: ml_collections.ConfigDict, variant: str, platform: str, impl: str | None = None
):
    """(FrozenTowers of abstract towers, their params as a tree, tower name -> config source); ``impl``
    as for :func:`abstract_tower`."""
    spec = variants.get(variant)
    sources = {}
    vision = {}
    for name in spec.vision:
        vision[name], sources[name] = abstract_tower(towers_cfg, name, "vision", platform, impl)
    text, sources[spec.text] = abstract_tower(towers_cfg, spec.text, "text", platform, impl)
    frozen = features.FrozenTowers(vision=vision, text=text, text_output=spec.text_output)
    params = {"vision": {n: t.params for n, t in vision.items()}, "text": text.params}
    return frozen, params, sources


def with_sharding(tree, shardings):
    """ShapeDtypeStructs of ``tree`` carrying ``shardings`` (a matching tree, or one sharding for all)."""
    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shardings), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# ------------------------------------------------------------------------------------------- the head


def metadata_num_classes(puzzle_ids) -> dict[int, int]:
    """C_p estimated from the shipped SMART_info_v2.csv (one instance per puzzle): the fixed sequence
    puzzles' counts, else the largest numeric option + 1 (at least 5, the options of a letter answer)."""
    with open(assets.path("SMART_info_v2.csv"), newline="", encoding="utf-8") as f:
        info = {int(r["id"]): r for r in csv.DictReader(f)}
    out = {}
    for pid in puzzle_ids:
        if pid in smart101.FIXED_NUM_CLASSES:
            out[pid] = smart101.FIXED_NUM_CLASSES[pid]
            continue
        values = [info[pid][k].strip() for k in "ABCDE"] if pid in info else []
        numbers = [int(v) for v in values if v.lstrip("-").isdigit()]
        out[pid] = max(5, max(numbers, default=0) + 1)
    return out


def head_data(config: ml_collections.ConfigDict) -> tuple[list[int], dict[int, int], dict[str, int], str]:
    """(puzzle ids, C_p by id, rows per split, where the counts came from): the data's own when its root
    holds the puzzles (the CSVs are read, nothing is built), else the shipped metadata's estimate with
    ``data_tot`` rows per puzzle split by ``data.ratio``."""
    root = config.data.root
    if not config.synthetic.enabled and root and smart101.found_puzzle_ids(root):
        ids = smart101.resolve_puzzle_ids(root, config.data.puzzle_ids)
        rows = smart101.read_rows(root, ids)
        classes = smart101.num_classes(rows)
        data_cfg = ml_collections.ConfigDict(config.data)
        data_cfg.puzzle_ids = ",".join(str(p) for p in ids)
        sizes = {s: len(smart101.split_rows(rows, s, data_cfg, classes)) for s in ("train", "val", "test")}
        return ids, classes, sizes, f"the data in {root}"
    from smartvlm_jax.data import synthetic

    if config.synthetic.enabled:
        ids = synthetic.resolve_ids(config.synthetic.puzzles or None)
        per_puzzle = min(int(config.synthetic.per_puzzle), int(config.data.data_tot))
    else:
        puzzle_ids = config.data.puzzle_ids
        ids = list(puzzles.ALL_PUZZLE_IDS) if puzzle_ids == "all" else synthetic.resolve_ids(puzzle_ids)
        per_puzzle = int(config.data.data_tot)
    ratio = [int(r) for r in config.data.ratio]
    sizes = {
        "train": len(ids) * (per_puzzle * ratio[0] // sum(ratio)),
        "val": len(ids) * (per_puzzle * ratio[1] // sum(ratio)),
    }
    sizes["test"] = len(ids) * per_puzzle - sizes["train"] - sizes["val"]
    return ids, metadata_num_classes(ids), sizes, "SMART_info_v2.csv (no data at hand: estimated C_p)"


# ------------------------------------------------------------------------------------------- the plan


def make_run(config, workdir, mesh, towers_cfg, ids, classes, frozen):
    """A ``train.Run`` for the trainer's step builders (no data, no workdir files)."""
    from smartvlm_jax import train
    from smartvlm_jax.workdir import Workdir

    model_cfg = ml_collections.ConfigDict(config.model)
    model_cfg.puzzle_ids = list(ids)
    model_cfg.num_classes = [int(classes[p]) for p in ids]
    model_cfg.vision_dim, model_cfg.text_dim = frozen.vision_dim, frozen.text_dim
    return train.Run(
        config=config,
        workdir=Workdir(workdir),
        mesh=mesh,
        data_cfg=ml_collections.ConfigDict(config.data),
        splits={},
        num_classes=dict(classes),
        towers_cfg=towers_cfg,
        model_cfg=model_cfg,
        model=reasoner.build(model_cfg),
        timing=summaries.StageTimes(),
        puzzle_info={},
    )


def plan(
    config: ml_collections.ConfigDict,
    target: Target,
    workdir: str | os.PathLike = "",
    members: int = 0,
) -> Plan:
    """The programs of the run ``config`` would run on ``target``: each tower's forward at the extraction
    batch (``eval_batch_size``), the train step (or, with ``members`` > 0, the vmapped member step of a
    group of that many), and the eval/predict step. ValueError or FileNotFoundError naming the flag at
    fault (a batch the mesh does not divide, a tower field that names nothing)."""
    from smartvlm_jax import train

    config = train.upgrade_config(config)
    # The trainer's checks, less the two that need the run's files: tower fields are checked (directory or
    # released id) by tower_config, and no data need be at hand (head_data estimates it).
    checked = ml_collections.ConfigDict(config.to_dict())
    checked.towers.tiny, checked.synthetic.enabled = True, True
    train.check_config(checked)
    mesh = parallel.make_mesh(config.mesh.fsdp, target.devices())
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh, "--config.eval_batch_size")
    towers_cfg = ml_collections.ConfigDict(config.towers)
    impl, attention_note = attention_for(target, mesh, towers_cfg.dtype, towers_cfg.get("attention", "xla"))
    frozen, tower_tree, sources = abstract_towers(towers_cfg, config.model.variant, target.platform, impl)
    ids, classes, rows, classes_from = head_data(config)
    run = make_run(config, workdir, mesh, towers_cfg, ids, classes, frozen)
    rules = parallel.TOWER_FSDP_RULES if towers_cfg.fsdp else parallel.REPLICATED_RULES
    tower_params = with_sharding(tower_tree, parallel.shardings_for(tower_tree, mesh, rules))
    n = mesh.devices.size
    programs = [tower_program(frozen, tower_params, mesh, config.eval_batch_size // n)]
    programs += step_programs(run, frozen, tower_params, rows, members)
    attention = frozen.text.config[backends.IMPL_KEY]
    if attention == "flash":  # the Pallas kernel runs per shard, over the mesh set around the lowering
        with_towers = programs if not config.cache_features else programs[:1]
        programs = [
            dataclasses.replace(p, lower=in_mesh(mesh, p.lower)) if p in with_towers else p for p in programs
        ]
    return Plan(
        target,
        mesh,
        programs,
        rows,
        int(config.num_epochs),
        int(config.batch_size),
        int(config.eval_batch_size),
        classes_from,
        sources,
        attention,
        attention_note,
    )


def in_mesh(mesh, lower: Callable[[int], Any]) -> Callable[[int], Any]:
    """``lower`` run inside ``jax.set_mesh(mesh)`` (what ``shard_map`` without a mesh, as the Pallas
    attention uses, reads)."""

    def lowered(b: int):
        with jax.set_mesh(mesh):
            return lower(b)

    return lowered


def attention_for(target: Target, mesh, dtype: str, attention: str = "xla") -> tuple[str, str]:
    """(attention formulation, note): the target platform's (:func:`xla.impl_for`), except cuDNN's on a GPU
    target where the compile-only client cannot compile it: then XLA's ("fused"), the note quoting why."""
    impl = xla.impl_for(target.platform, params_lib.compute_dtype(dtype), attention)
    if impl != "cudnn":
        return impl, ""
    from smartvlm_jax.aot import gpu

    error = gpu.cudnn_attention_error(list(mesh.devices.flat))
    if not error:
        return impl, ""
    return "fused", f"cuDNN attention did not compile here ({error}); figures with XLA's attention"


def tower_program(frozen: features.FrozenTowers, tower_params, mesh, batch: int) -> Program:
    """The extraction program: every tower's features of a batch (``FrozenTowers.columns``)."""
    data = parallel.batch_sharding(mesh)
    fn = jax.jit(frozen.columns)
    names = ", ".join([*frozen.vision, f"{frozen.text.kind} text"])

    def lower(b: int):
        return fn.lower(tower_params, batches.image_batch(frozen, b * mesh.devices.size, data, labels=False))

    return Program("towers", f"tower forwards ({names}) at the extraction batch", batch, lower)


def step_programs(run, frozen, tower_params, rows: Mapping[str, int], members: int) -> list[Program]:
    """The train step (a group's vmapped member step with ``members`` > 0) and the predict step, built
    by ``train.Group.steps`` with the trainer's shardings."""
    from smartvlm_jax import train
    from smartvlm_jax.train import ahead

    config, mesh = run.config, run.mesh
    n = mesh.devices.size
    cached = bool(config.cache_features)
    total_steps = int(config.num_epochs) * math.ceil(rows["train"] / config.batch_size)
    tx = optim.make_optimizer(config.optim, total_steps)
    if members:
        specs = [train.Member(f"m{i}", int(config.seed) + i) for i in range(members)]
        group = train.Group(run, [run] * members, specs)
    else:
        group = train.Group(run, [run], None)
    abstract_state = ahead.trace_initialiser(group, tx)[0].out_info
    steps = group.steps(tx, total_steps, None if cached else frozen, train.state.shardings(abstract_state))
    data, repl = parallel.batch_sharding(mesh), parallel.replicated(mesh)
    make_batch = functools.partial(batches.frozen_feature_batch if cached else batches.image_batch, frozen)
    towers_arg = None if cached else tower_params

    active = np.ones((max(members, 1),), bool)  # host data: no array on the mesh's (absent) devices

    def lower_train(b: int):
        args = steps.args(make_batch(b * n, data), towers_arg, active)
        extra = with_sharding(args[2:], repl) if members else ()
        return steps.train.lower(abstract_state, *args[:2], *extra)

    def lower_predict(b: int):
        return steps.predict.lower(abstract_state.params, make_batch(b * n, data), towers_arg)

    where = "stored features" if cached else "images through the towers"
    if members:
        train_prog = Program(
            "member_step",
            f"vmapped member step of {members} members on {where}",
            config.batch_size // n,
            lower_train,
        )
    else:
        train_prog = Program("train_step", f"train step on {where}", config.batch_size // n, lower_train)
    predict = Program(
        "eval_step", f"eval/predict step on {where}", config.eval_batch_size // n, lower_predict
    )
    return [train_prog, predict]
