"""Forward+backward of the reasoner head at batch 128 over all 101 puzzles: JAX (jitted) vs the
PyTorch port (eager, the reference's loops), same weights, same inputs, same run.

    python -m benchmarks.head [--steps 10] [--quirks] [--impls gather,ragged]

Reports the median milliseconds per step for batches drawn from 1, 10 and 101 puzzles (the JAX cost should
not grow with the number of puzzles). Class counts are synthetic (2..60, sequence puzzles 27/6).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import torch

from benchmarks import timing
from smartvlm_jax import cli, puzzles, reasoner
from tests.support.torch_port import head as port_lib


def make_config(impl: str, quirks: bool):
    cfg = reasoner.default_config()
    rng = np.random.default_rng(0)
    cfg.puzzle_ids = list(puzzles.ALL_PUZZLE_IDS)
    cfg.num_classes = [
        (27 if p in (16, 39, 100, 63) else 6) if puzzles.is_sequence(p) else int(rng.integers(2, 61))
        for p in cfg.puzzle_ids
    ]
    cfg.head_impl, cfg.reference_quirks = impl, quirks
    return cfg


def batch(cfg, num_puzzles: int, size: int, seed: int):
    rng = np.random.default_rng(seed)
    chosen = rng.choice(cfg.puzzle_ids, num_puzzles, replace=False)
    pids = rng.choice(chosen, size).astype(np.int32)
    vision = rng.normal(size=(size, 1536)).astype(np.float32)
    text = rng.normal(size=(size, cfg.text_dim)).astype(np.float32)
    classes = dict(zip(cfg.puzzle_ids, cfg.num_classes, strict=True))
    labels = np.stack([rng.integers(0, classes[p], cfg.num_decode_steps) for p in pids]).astype(np.int32)
    return vision, text, pids, labels


def timeit(fn, args: tuple, steps: int) -> float:
    """Median milliseconds per call of fn(*args) over ``steps`` calls after one warm-up call (JAX compiles
    there), each waited for (:mod:`benchmarks.timing`)."""
    return timing.time_call(lambda: fn(*args), steps).median * 1e3


def jax_step(model, cfg):
    """Jitted loss + gradient of the head's parameters, dropout on (a training step without optax)."""

    @jax.jit
    def step(params, vision, text, pids, labels, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, vision, text, pids, train=True, rngs={"dropout": key})
            return reasoner.loss(logits, labels, pids, cfg)

        return jax.value_and_grad(loss_fn)(params)

    return step


def torch_step(port, vision, text, pids, labels):
    """Eager loss + backward of the port (the reference's loops and criterion)."""
    port.zero_grad(set_to_none=True)
    port_lib.reference_loss(port(vision, text, pids), labels, pids).backward()


def main() -> None:
    cli.keep_jax_off_absent_accelerators()  # an installed libtpu or CUDA plugin stays quiet here
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--quirks", action="store_true")
    parser.add_argument("--impls", default="gather,ragged")
    args = parser.parse_args()
    print(f"jax {jax.__version__} torch {torch.__version__} threads {torch.get_num_threads()} B {args.batch}")
    for impl in args.impls.split(","):
        cfg = make_config(impl, args.quirks)
        torch.manual_seed(0)
        port = port_lib.TorchSmarterHead(cfg).train()
        params = port_lib.jax_params(port)
        step = jax_step(reasoner.build(cfg), cfg)
        for n in (1, 10, 101):
            v, t, p, lab = batch(cfg, n, args.batch, seed=n)
            ms_j = timeit(step, (params, v, t, p, lab, jax.random.PRNGKey(0)), args.steps)
            targs = tuple(torch.from_numpy(a) for a in (v, t, p.astype(np.int64), lab.astype(np.int64)))
            ms_t = timeit(torch_step, (port, *targs), args.steps)
            print(
                f"impl={impl:7s} quirks={args.quirks!s:5s} puzzles={n:3d}  jax {ms_j:8.1f} ms/step"
                f"  torch-port {ms_t:8.1f} ms/step  speedup {ms_t / ms_j:5.2f}x"
            )


if __name__ == "__main__":
    main()
