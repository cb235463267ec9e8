"""The vmapped members' train step (``train.member_step`` under ``jax.vmap``) for N members: its memory as
XLA's compiler plans it (argument, output, temporary and aliased (donated) bytes) and its speed.

    python -m benchmarks.members [--members 1,3,8] [--head smoke|smarter] [--speed] [--steps 200]

"smoke": the head of configs/smoke.py (tiny towers' 64-d vision, 32-d text; the 11 synthetic puzzles,
batch 32); "smarter": the paper's head (1536-d fused vision, 768-d SigLIP text, all 101 puzzles, batch
128). The "1 (single)" row is the unstacked ``train.train_step`` of a single run. One member's state
(params + AdamW moments) is printed too: the arguments should grow by about that per member, on top of
the shared batch. ``--speed`` adds milliseconds per step: ``--steps`` consecutive steps on random batches
of the head's puzzles, the state donated from step to step as in training, median of 5 rounds after one
warm-up round (benchmarks/timing.py); per member it is that over N.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from configs import smarter, smoke
from smartvlm_jax import cli, optim, puzzles, reasoner, train
from smartvlm_jax.data import synthetic


def head_and_batch(kind: str):
    """(config, model_cfg, batch of ShapeDtypeStructs) of the smoke or SMARTER head."""
    config = smoke.get_config() if kind == "smoke" else smarter.get_config()
    cfg = reasoner.default_config()
    cfg.update(config.model.to_dict())
    if kind == "smoke":
        cfg.puzzle_ids, cfg.vision_dim, cfg.text_dim, size = list(synthetic.resolve_ids(None)), 64, 32, 32
    else:
        cfg.puzzle_ids, cfg.vision_dim, cfg.text_dim, size = list(puzzles.ALL_PUZZLE_IDS), 1536, 768, 128
    rng = np.random.default_rng(0)
    cfg.num_classes = [
        (27 if p in (16, 39, 100, 63) else 6) if puzzles.is_sequence(p) else int(rng.integers(2, 61))
        for p in cfg.puzzle_ids
    ]
    k = cfg.num_decode_steps
    batch = {
        "vision": jax.ShapeDtypeStruct((size, cfg.vision_dim), jnp.float32),
        "text": jax.ShapeDtypeStruct((size, cfg.text_dim), jnp.float32),
        "puzzle_ids": jax.ShapeDtypeStruct((size,), jnp.int32),
        "labels": jax.ShapeDtypeStruct((size, k), jnp.int32),
        "mask": jax.ShapeDtypeStruct((size,), jnp.bool_),
    }
    return config, cfg, batch


def step_and_args(kind: str, n: int | None):
    """(jitted step with the state donated, its abstract arguments, state initialiser from seeds) for
    ``n`` members (None: the single run's unstacked step)."""
    config, cfg, batch = head_and_batch(kind)
    model = reasoner.build(cfg)
    total_steps = 1000
    tx = optim.make_optimizer(config.optim, total_steps)

    def init(seed):
        key = jax.random.key(seed)
        params = model.init({"params": key, "dropout": key}, *reasoner.checkpoint.example_inputs(cfg, 1))
        params = params["params"]
        return train.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key_data(key))

    if n is None:
        state = jax.eval_shape(init, 0)
        step = functools.partial(
            train.train_step,
            model=model,
            model_cfg=cfg,
            tx=tx,
            schedule=optim.learning_rate_schedule(config.optim, total_steps),
        )
        args = (state, batch, None)
    else:
        state = jax.eval_shape(jax.vmap(init), jax.ShapeDtypeStruct((n,), jnp.int32))
        step = jax.vmap(
            functools.partial(
                train.member_step, model=model, model_cfg=cfg, optim_cfg=config.optim, total_steps=total_steps
            ),
            in_axes=(0, None, None, 0, 0),
        )
        hparams = {k: jax.ShapeDtypeStruct((n,), jnp.float32) for k in ("lr", "weight_decay", "pdrop")}
        args = (state, batch, None, hparams, jax.ShapeDtypeStruct((n,), jnp.bool_))
    make_state = jax.jit(init if n is None else jax.vmap(init))
    return jax.jit(step, donate_argnums=(0,)), args, make_state


def memory(kind: str, n: int | None) -> dict[str, int]:
    """Compiled memory of one step for ``n`` members (None: the single run's unstacked step), bytes."""
    step, args, _ = step_and_args(kind, n)
    state = args[0]
    stats = step.lower(*args).compile().memory_analysis()
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    return {
        "state": state_bytes,
        "arguments": stats.argument_size_in_bytes,
        "outputs": stats.output_size_in_bytes,
        "temp": stats.temp_size_in_bytes,
        "aliased": stats.alias_size_in_bytes,
    }


def concrete_batch(kind: str, batch: dict, seed: int) -> dict[str, jax.Array]:
    """A random batch shaped like ``batch`` (ShapeDtypeStructs): features, the head's puzzles, labels
    within each puzzle's classes, every sample valid."""
    _, cfg, _ = head_and_batch(kind)
    rng = np.random.default_rng(seed)
    size = batch["puzzle_ids"].shape[0]
    ids = rng.choice(np.asarray(cfg.puzzle_ids), size)
    classes = dict(zip(cfg.puzzle_ids, cfg.num_classes, strict=True))
    labels = np.stack([rng.integers(0, classes[p], batch["labels"].shape[1]) for p in ids])
    return {
        "vision": jnp.asarray(rng.standard_normal(batch["vision"].shape), jnp.float32),
        "text": jnp.asarray(rng.standard_normal(batch["text"].shape), jnp.float32),
        "puzzle_ids": jnp.asarray(ids, jnp.int32),
        "labels": jnp.asarray(labels, jnp.int32),
        "mask": jnp.ones(size, bool),
    }


def speed(kind: str, n: int | None, steps: int) -> float:
    """Median seconds per step of ``steps`` consecutive steps for ``n`` members (None: single run)."""
    step, args, make_state = step_and_args(kind, n)
    batches = [concrete_batch(kind, args[1], seed) for seed in range(8)]
    extra = ()
    if n is not None:
        hparams = {"lr": 1e-3, "weight_decay": 0.01, "pdrop": 0.2}
        extra = ({k: jnp.full((n,), v, jnp.float32) for k, v in hparams.items()}, jnp.ones((n,), bool))
    state = [make_state(jnp.arange(n) if n is not None else 0)]

    def run_steps():
        for i in range(steps):
            state[0], _ = step(state[0], batches[i % len(batches)], None, *extra)
        return state[0]

    return timing.time_call(run_steps, repeats=5).median / steps


def main(argv: list[str] | None = None) -> None:
    cli.keep_jax_off_absent_accelerators()  # an installed libtpu or CUDA plugin stays quiet here
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", default="1,3,8", help="comma-separated member counts")
    parser.add_argument("--head", default="smoke", choices=("smoke", "smarter"))
    parser.add_argument("--speed", action="store_true", help="also time the steps (ms per step)")
    parser.add_argument("--steps", type=int, default=200, help="steps per timed round (--speed)")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.members.split(",")]
    print(f"{args.head} head, jax {jax.__version__} on {jax.devices()[0].platform}; MiB per compiled step")
    timed = f" {'ms/step':>9} {'ms/member':>10}" if args.speed else ""
    print(f"{'members':>12} {'state':>9} {'arguments':>10} {'outputs':>9} {'temp':>9} {'aliased':>9}{timed}")
    for n in [None, *counts]:
        m = memory(args.head, n)
        label = "1 (single)" if n is None else str(n)
        widths = {"state": 9, "arguments": 10, "outputs": 9, "temp": 9, "aliased": 9}
        cells = " ".join(f"{m[k] / 2**20:>{w}.3f}" for k, w in widths.items())
        if args.speed:
            ms = speed(args.head, n, args.steps) * 1e3
            cells += f" {ms:>9.2f} {ms / (n or 1):>10.2f}"
        print(f"{label:>12} {cells}", flush=True)


if __name__ == "__main__":
    main()
