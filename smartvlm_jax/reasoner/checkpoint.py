"""Model directories: config.json (the head's ConfigDict) plus the parameters in ``params.safetensors``.

A model dir is self-describing: `load` rebuilds the exact module from config.json and reads the
parameters against its shapes, so evaluation and prediction need nothing else. The tensors are named by
their path in the params tree joined with "/" (``im_encoder/0_kernel``), float32, in the head's layout
(docs/heads.md). Model dirs written before 2026-11-30 hold an Orbax checkpoint in ``params/`` instead;
`load` reads those too. One file, written in one call, costs a fraction of an Orbax save
(docs/performance.md, figures behind the code's choices): training exports the best head of every member
each time it improves.
"""

from __future__ import annotations

import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import safetensors
import safetensors.numpy
from flax import traverse_util

from smartvlm_jax.reasoner import config as config_lib
from smartvlm_jax.reasoner.model import build
from smartvlm_jax.workdir import BEST_MODEL_DIR, CONFIG_FILE

PARAMS_FILE = "params.safetensors"
LEGACY_PARAMS_DIR = "params"  # model dirs written before 2026-11-30: an Orbax checkpoint


def example_inputs(cfg: ml_collections.ConfigDict, batch: int = 2) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Zero features and valid puzzle ids of the right shapes, for init and shape inference.

    Text is pooled [B, text_dim] for the SMARTER head and BERT token states [B, max_qlen, text_dim] for the
    baseline head (whose parameters do not depend on the length).
    """
    vision = jnp.zeros((batch, config_lib.vision_dim(cfg)), jnp.float32)
    tokens = (cfg.max_qlen,) if cfg.get("head", "smarter") == "baseline" else ()
    text = jnp.zeros((batch, *tokens, cfg.text_dim), jnp.float32)
    pids = jnp.full((batch,), int(cfg.puzzle_ids[0]), jnp.int32)
    return vision, text, pids


def save(out_dir: str | pathlib.Path, cfg: ml_collections.ConfigDict, params) -> pathlib.Path:
    """Write a model dir (config.json + params.safetensors). `params` is the head's params tree (or the
    variables dict holding it under "params"). Refuses to overwrite an existing model dir
    (FileExistsError). One writer: in a multi-process job only one process calls it."""
    config_lib.validate(cfg)
    out = pathlib.Path(out_dir).absolute()
    if any((out / name).exists() for name in (CONFIG_FILE, PARAMS_FILE, LEGACY_PARAMS_DIR)):
        raise FileExistsError(f"{out} already holds a model")
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    out.mkdir(parents=True, exist_ok=True)
    flat = {"/".join(k): np.ascontiguousarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    safetensors.numpy.save_file(flat, str(out / PARAMS_FILE))
    (out / CONFIG_FILE).write_text(cfg.to_json(indent=2) + "\n")
    return out


def read_params(file: pathlib.Path, target):
    """The params tree in safetensors ``file``, checked against ``target`` (a tree of ShapeDtypeStructs):
    jax arrays. ValueError names the file and the tensor that is missing, extra or of the wrong shape or
    dtype, or says the file is not safetensors."""
    try:
        tensors = safetensors.numpy.load_file(str(file))
    except (safetensors.SafetensorError, OSError) as e:
        raise ValueError(f"{file} is not a readable safetensors file: {e}") from None
    expected = {"/".join(k): v for k, v in traverse_util.flatten_dict(target).items()}
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing:
        raise ValueError(f"{file}: no tensor {missing[0]!r}, which the head of config.json has")
    if extra:
        raise ValueError(f"{file}: tensor {extra[0]!r} is not a parameter of the head of config.json")
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ValueError(
                f"{file}: tensor {name!r} is {got.dtype}{list(got.shape)}, the head of config.json has "
                f"{want.dtype}{list(want.shape)}"
            )
    # device_put, not jnp.asarray: the latter compiles a copy program per shape (jax.lax.stage)
    return traverse_util.unflatten_dict({tuple(k.split("/")): jax.device_put(v) for k, v in tensors.items()})


def _model_dir(path: pathlib.Path) -> pathlib.Path:
    # A training workdir has its own config.json (the run's): its best_model comes first.
    if (path / BEST_MODEL_DIR / CONFIG_FILE).is_file():
        return path / BEST_MODEL_DIR
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {path} or {path / BEST_MODEL_DIR}")
    try:
        run_config = {"towers", "optim"} <= set(json.loads((path / CONFIG_FILE).read_text()))
    except (ValueError, TypeError):  # not JSON (named by load) or not an object
        run_config = False
    if run_config:  # a training workdir before its first best model: no model to load yet
        from smartvlm_jax.workdir import Workdir

        holder = Workdir(path).holder()
        raise FileNotFoundError(
            f"{path / BEST_MODEL_DIR} does not exist yet: {path} is in use by {holder}, which writes it with "
            "its first checkpoint after a validation"
            if holder
            else f"{path / BEST_MODEL_DIR} does not exist: the run in {path} stopped before its first "
            "validation; resume it with its python -m smartvlm_jax.main command"
        )
    return path


def load(path: str | pathlib.Path) -> tuple[nn.Module, dict, ml_collections.ConfigDict]:
    """Load (model, variables, cfg) from a model dir or a training workdir holding DIR/best_model."""
    mdir = _model_dir(pathlib.Path(path).absolute())
    cfg = config_lib.default_config()
    try:
        cfg.update(config_lib.upgrade(json.loads((mdir / CONFIG_FILE).read_text())))
    except json.JSONDecodeError as e:
        raise ValueError(f"{mdir / CONFIG_FILE} is not valid JSON: {e}") from None
    model = build(cfg)
    target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *example_inputs(cfg)))["params"]
    if (mdir / PARAMS_FILE).is_file():
        params = read_params(mdir / PARAMS_FILE, target)
    elif (mdir / LEGACY_PARAMS_DIR).is_dir():
        params = ocp.StandardCheckpointer().restore(mdir / LEGACY_PARAMS_DIR, target)
    else:
        raise FileNotFoundError(f"{mdir} has {CONFIG_FILE} but no {PARAMS_FILE}")
    return model, {"params": params}, cfg


def param_summary(params) -> str:
    """Parameter counts per top-level module and in total, as an aligned text table."""
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    rows = [(name, sum(int(np.prod(x.shape)) for x in jax.tree.leaves(sub))) for name, sub in params.items()]
    width = max(len(n) for n, _ in rows + [("total", 0)])
    lines = [f"{n:<{width}}  {c:>12,d}" for n, c in rows]
    lines.append(f"{'total':<{width}}  {sum(c for _, c in rows):>12,d}")
    return "\n".join(lines)
