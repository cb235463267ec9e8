"""Model directories: config.json (the head's ConfigDict) plus the parameters as an Orbax checkpoint.

A model dir is self-describing: `load` rebuilds the exact module from config.json and restores the
parameters against its shapes, so evaluation and prediction need nothing else.
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

from smartvlm_jax.reasoner import config as config_lib
from smartvlm_jax.reasoner.model import build
from smartvlm_jax.workdir import BEST_MODEL_DIR, CONFIG_FILE

PARAMS_DIR = "params"


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
    """Write a model dir (config.json + Orbax params). `params` is the head's params tree (or the
    variables dict holding it under "params"). Refuses to overwrite an existing model dir."""
    config_lib.validate(cfg)
    out = pathlib.Path(out_dir).absolute()
    if (out / CONFIG_FILE).exists() or (out / PARAMS_DIR).exists():
        raise FileExistsError(f"{out} already holds a model")
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    out.mkdir(parents=True, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(out / PARAMS_DIR, jax.tree.map(np.asarray, params))
    ckptr.wait_until_finished()
    (out / CONFIG_FILE).write_text(cfg.to_json(indent=2) + "\n")
    return out


def _model_dir(path: pathlib.Path) -> pathlib.Path:
    # A training workdir has its own config.json (the run's): its best_model comes first.
    for cand in (path / BEST_MODEL_DIR, path):
        if (cand / CONFIG_FILE).is_file():
            return cand
    raise FileNotFoundError(f"no {CONFIG_FILE} in {path} or {path / BEST_MODEL_DIR}")


def load(path: str | pathlib.Path) -> tuple[nn.Module, dict, ml_collections.ConfigDict]:
    """Load (model, variables, cfg) from a model dir or a training workdir holding DIR/best_model."""
    mdir = _model_dir(pathlib.Path(path).absolute())
    cfg = config_lib.default_config()
    try:
        cfg.update(json.loads((mdir / CONFIG_FILE).read_text()))
    except json.JSONDecodeError as e:
        raise ValueError(f"{mdir / CONFIG_FILE} is not valid JSON: {e}") from None
    model = build(cfg)
    target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *example_inputs(cfg)))["params"]
    params = ocp.StandardCheckpointer().restore(mdir / PARAMS_DIR, target)
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
