"""Checks made before any work: every config field that cannot be right, the tiny-tower flag against
named tower directories, and a workdir that holds another head. Each error names the flag at fault.

:func:`upgrade_config` is the one place that knows about run configs written by older versions.
"""

import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections

from smartvlm_jax import features, optim, variants
from smartvlm_jax.data import smart101
from smartvlm_jax.reasoner import config as head_config
from smartvlm_jax.workdir import Workdir

# Back-compat, and only that: fields added to the run config after some runs were written, with the value
# that reproduces what such a run did. The defaults of new runs live in configs/smarter.py, nowhere else.
ADDED_FIELDS: Mapping[str, Any] = {
    "data_seed": -1,  # the data order followed `seed`
    "feature_dtype": "float32",
    "feature_store": "",  # features were stored in the workdir
    "compile_cache_dir": "",  # no persistent compilation cache
    "checkpoint_min_interval_secs": 0.0,  # every routine save was taken
    "model.head": "smarter",
    "towers.attention": "xla",  # XLA's attention was the only one
}


def upgrade_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with every field in :data:`ADDED_FIELDS` that it lacks filled in and the head's renamed
    fields (``variants.RENAMED_FIELDS``: ``model.features`` is ``model.variant``) under their new
    names: a copy when anything changed, ``config`` itself otherwise (a run config of this version)."""
    renamed = head_config.upgrade(config.model.to_dict()) if "model" in config else None
    if renamed is not None and set(renamed) != set(config.model.keys()):
        config = ml_collections.ConfigDict(config.to_dict())
        config.model = ml_collections.ConfigDict(renamed)
    missing = {}
    for dotted, value in ADDED_FIELDS.items():
        *parents, name = dotted.split(".")
        section = config
        for parent in parents:
            section = section.get(parent)
        if section is not None and name not in section:
            missing[dotted] = value
    if not missing:
        return config
    config = ml_collections.ConfigDict(config.to_dict())
    for dotted, value in missing.items():
        *parents, name = dotted.split(".")
        section = config
        for parent in parents:
            section = section[parent]
        section[name] = value
    return config


def check_tower_kernels(towers: ml_collections.ConfigDict) -> None:
    """ValueError naming ``--config.towers.dtype`` or ``--config.towers.attention`` when not a choice."""
    if towers.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--config.towers.dtype={towers.dtype!r} is not 'float32' or 'bfloat16'")
    if towers.get("attention", "xla") not in ("xla", "flash"):
        raise ValueError(f"--config.towers.attention={towers.attention!r} is not 'xla' or 'flash'")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Fail before any work on a field that cannot be right, naming it."""
    optim.make_optimizer(config.optim, total_steps=1)  # optimiser and schedule fields, named on error
    variants.check(config.model.variant, config.model.head, ("--config.model.variant", "--config.model.head"))
    check_tower_kernels(config.towers)
    if not config.towers.tiny:
        for name in variants.get(config.model.variant).towers:
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
    check_numbers(config)
    ratio = tuple(config.data.ratio)
    if len(ratio) != 3 or min(ratio) < 0 or sum(ratio) <= 0:
        raise ValueError(f"--config.data.ratio={ratio} must be three percentages train,val,test (60,20,20)")
    if config.data.split_type not in smart101.SPLIT_TYPES:
        raise ValueError(
            f"--config.data.split_type={config.data.split_type!r} is not one of {smart101.SPLIT_TYPES}"
        )
    if config.feature_dtype not in features.STORAGE_DTYPES:
        raise ValueError(
            f"--config.feature_dtype={config.feature_dtype!r} is not one of {features.STORAGE_DTYPES}"
        )


def check_numbers(config: ml_collections.ConfigDict) -> None:
    """ValueError naming a numeric field out of its range."""
    if not (math.isfinite(float(config.optim.lr)) and float(config.optim.lr) > 0):
        raise ValueError(f"--config.optim.lr={config.optim.lr} must be a finite number > 0")
    for field in ("num_epochs", "batch_size", "eval_batch_size", "checkpoint_every_steps", "log_every_steps"):
        if int(config[field]) < 1:
            raise ValueError(f"--config.{field}={config[field]} must be >= 1")
    if not -(2**31) <= int(config.seed) < 2**31:  # the key is made from an int32 seed (Group.initialiser)
        raise ValueError(f"--config.seed={config.seed} must fit in 32 bits (-2**31 <= seed < 2**31)")
    if not float(config.checkpoint_min_interval_secs) >= 0:
        raise ValueError(
            f"--config.checkpoint_min_interval_secs={config.checkpoint_min_interval_secs} must be >= 0"
        )


def check_tiny_towers(config: ml_collections.ConfigDict, workdir: Workdir) -> None:
    """ValueError when ``--config.towers.tiny`` would silently replace tower directories the config names
    (the run's own tiny towers under ``<workdir>/towers``, recorded by an earlier run, are fine), or
    ``--config.synthetic.enabled`` a data folder it names (the run's own ``<workdir>/synthetic`` is fine)."""
    root = config.data.root
    if config.synthetic.enabled and root and pathlib.Path(root).absolute() != workdir.synthetic.absolute():
        raise ValueError(
            f"--config.data.root={root!r} would be ignored: --config.synthetic.enabled=True writes synthetic "
            "puzzles into the workdir; set --config.synthetic.enabled=False to read the folder"
        )
    if not config.towers.tiny:
        return
    for name in variants.get(config.model.variant).towers:
        path = config.towers.get(name, "")
        if path and pathlib.Path(path).absolute() != workdir.towers / name:
            raise ValueError(
                f"--config.towers.{name}={path!r} would be ignored: --config.towers.tiny=True builds random "
                "towers into the workdir; set --config.towers.tiny=False to use the directory"
            )


def has_checkpoints(workdir: Workdir) -> bool:
    """Whether ``workdir`` holds a checkpoint: something was trained there with its config.json."""
    return workdir.checkpoints.is_dir() and any(workdir.checkpoints.iterdir())


# Fields of the training recipe a resumed run may change, which then changes the training from the
# checkpoint's step on (the learning-rate schedule spans num_epochs * steps per epoch): said, not refused.
RECIPE_FIELDS = ("num_epochs", "batch_size", "optim")


def changed_recipe(workdir: Workdir, config: Mapping[str, Any]) -> list[str]:
    """One warning line per recipe field (:data:`RECIPE_FIELDS`) in which ``config`` (the resolved run
    config, as JSON) differs from the one ``workdir``'s checkpoints were trained with; [] when it holds
    none."""
    checkpoints = has_checkpoints(workdir)
    if not (checkpoints and workdir.config_file.is_file()):
        return []
    saved = json.loads(workdir.config_file.read_text())
    lines = []
    for field in RECIPE_FIELDS:
        before, now = saved.get(field), config.get(field)
        if isinstance(before, dict) and isinstance(now, dict):
            pairs = [(f"{field}.{k}", before.get(k), now.get(k)) for k in sorted({*before, *now})]
        else:
            pairs = [(field, before, now)]
        lines += [
            f"--config.{name}={new!r}: this workdir's checkpoints were trained with {old!r}; training "
            "resumes from its last checkpoint with the new value (the learning-rate schedule included)"
            for name, old, new in pairs
            if old != new and old is not None
        ]
    return lines


def check_not_a_sweep(workdir: Workdir) -> None:
    """ValueError when ``workdir`` holds a sweep (its ``sweep.json``, or its config's sweep fields): a run
    trained there would replace the sweep's config.json, and the sweep could no longer resume."""
    try:
        held = json.loads(workdir.config_file.read_text()) if workdir.config_file.is_file() else {}
    except ValueError:
        held = {}
    if (workdir.root / "sweep.json").is_file() or (isinstance(held, dict) and "row_overrides" in held):
        raise ValueError(
            f"{workdir.root} holds a sweep, not a training run: resume it with python -m smartvlm_jax.sweep, "
            "or train in a new --workdir"
        )


def check_same_head(workdir: Workdir, model: Mapping[str, Any]) -> None:
    """ValueError naming the ``--config.model.*`` fields that differ from the head a workdir's checkpoints
    hold: its parameters could not be restored into another head, and the workdir must keep describing
    what it holds (its ``config.json`` is not rewritten)."""
    checkpoints = has_checkpoints(workdir)
    if not ((checkpoints or workdir.best_model.exists()) and workdir.config_file.is_file()):
        return
    saved = json.loads(workdir.config_file.read_text()).get("model", {})
    changed = sorted(k for k in {*saved, *model} if saved.get(k) != model.get(k))
    if changed:
        fields = ", ".join(
            f"--config.model.{k}={model.get(k)!r} (it holds {saved.get(k)!r})" for k in changed
        )
        raise ValueError(f"{workdir.root} holds a run of another head: {fields}; use a new --workdir")
