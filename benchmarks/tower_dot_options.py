"""Base towers in fp32 on CPU with the oneDNN kernels running the blocks: XLA's default dots against XLA's
oneDNN dot options (``xla.CPU_FP32_COMPILER_OPTIONS``) for the dots outside the blocks, which is what
``Tower.compiler_options`` chooses between. Random-init base towers, batch 8, interleaved rounds.

    python -m benchmarks.tower_dot_options [--batch 8] [--rounds 8]
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import numpy as np

from benchmarks import timing
from smartvlm_jax import cli, towers
from smartvlm_jax.towers.backends import xla
from tests.support.hf import DINOV2_BASE


def main() -> None:
    cli.keep_jax_off_absent_accelerators()  # an installed libtpu or CUDA plugin stays quiet here
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    out = tempfile.mkdtemp()
    for kind, config in (("dinov2", dict(DINOV2_BASE)), ("siglip", {"model_type": "siglip_vision_model"})):
        tower = towers.load(towers.create_random(f"{out}/{kind}", kind, config, seed=0), "vision")
        if not tower.packs_linears:
            raise SystemExit("the oneDNN kernels do not run here: nothing to compare")
        side = tower.image_size
        x = np.random.default_rng(0).normal(size=(args.batch, side, side, 3)).astype(np.float32)
        params = tower.ready_params
        fns = {}
        for name, options in (("default dots", None), ("XLA oneDNN dots", xla.CPU_FP32_COMPILER_OPTIONS)):
            f = jax.jit(tower.apply, compiler_options=options)
            fns[name] = lambda f=f, params=params, x=x: f(params, x)
        for name, result in timing.time_rounds(fns, repeats=args.rounds).items():
            print(f"{kind} {name}: median {result.median:.3f} s per batch of {args.batch}")


if __name__ == "__main__":
    main()
