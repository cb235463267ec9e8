"""Images/s (texts/s) of each frozen tower's forward: JAX vs transformers PyTorch, same inputs, same run.

Builds random-init base towers (dinov2-base, siglip-base-patch16-224 vision and text) with transformers,
loads the same weights into JAX through the converter, checks the outputs agree, then times both
(fp32 by default) next to this machine's measured 2048^3 matmul GFLOP/s in each framework.

    python benchmarks/towers.py [--batch 8] [--iters 3] [--dtype float32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from smartvlm_jax import towers

CONFIGS = {
    "dinov2-base": (
        "vision",
        transformers.Dinov2Model,
        transformers.Dinov2Config(image_size=518, patch_size=14),
    ),
    "siglip-base vision": ("vision", transformers.SiglipVisionModel, transformers.SiglipVisionConfig()),
    "siglip-base text": ("text", transformers.SiglipTextModel, transformers.SiglipTextConfig()),
}


def best_time(fn: Callable[[], Any], iters: int) -> float:
    """Best wall time of ``iters`` calls after one warm-up (compilation) call."""
    fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_gflops(iters: int) -> dict[str, float]:
    """fp32 2048^3 matmul throughput of JAX and PyTorch on this machine."""
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    ja = jnp.asarray(a)
    f = jax.jit(lambda x: x @ x)
    ta = torch.from_numpy(a)
    flops = 2 * n**3
    return {
        "jax": flops / best_time(lambda: f(ja).block_until_ready(), iters) / 1e9,
        "torch": flops / best_time(lambda: ta @ ta, iters) / 1e9,
    }


def bench_tower(name: str, batch: int, iters: int, dtype: str, workdir: str) -> dict[str, Any]:
    """Times one tower; returns items/s of both frameworks and their max |difference|."""
    part, cls, config = CONFIGS[name]
    torch.manual_seed(0)
    model = cls(config).eval()
    path = os.path.join(workdir, name.replace(" ", "_"))
    model.save_pretrained(path)
    if part == "text":
        ids = np.random.default_rng(0).integers(0, config.vocab_size, (batch, 64)).astype(np.int32)
        tower = towers.load(path, part="text", dtype=dtype)
        inputs, torch_kwargs = jnp.asarray(ids), {"input_ids": torch.from_numpy(ids.astype(np.int64))}
    else:
        tower = towers.load(path, part="vision", dtype=dtype)
        s = tower.image_size
        pixels = np.random.default_rng(0).standard_normal((batch, s, s, 3)).astype(np.float32)
        inputs = jnp.asarray(pixels)
        torch_kwargs = {"pixel_values": torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())}
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    model = model.to(torch_dtype)
    torch_kwargs = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in torch_kwargs.items()}

    def run_torch():
        with torch.inference_mode():
            return model(**torch_kwargs).last_hidden_state

    t_jax = best_time(lambda: tower.encode(inputs).block_until_ready(), iters)
    t_torch = best_time(run_torch, iters)
    diff = float(np.abs(np.asarray(tower.encode(inputs)) - run_torch().float().numpy()).max())
    return {"tower": name, "batch": batch, "dtype": dtype, "jax_per_s": batch / t_jax,
            "torch_per_s": batch / t_torch, "max_abs_diff": diff}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--towers", default=",".join(CONFIGS), help="comma-separated subset of the towers")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    gflops = matmul_gflops(args.iters)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.towers.split(","):
            rows.append(bench_tower(name, args.batch, args.iters, args.dtype, workdir))
    print(f"matmul 2048^3 fp32: JAX {gflops['jax']:.0f} GFLOP/s, PyTorch {gflops['torch']:.0f} GFLOP/s")
    print(
        f"{'tower':<22}{'batch':>6}{'dtype':>10}{'JAX/s':>10}{'torch/s':>10}{'JAX/torch':>11}{'max|diff|':>11}"
    )
    for r in rows:
        print(f"{r['tower']:<22}{r['batch']:>6}{r['dtype']:>10}{r['jax_per_s']:>10.2f}{r['torch_per_s']:>10.2f}"
              f"{r['jax_per_s'] / r['torch_per_s']:>11.2f}{r['max_abs_diff']:>11.1e}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"matmul_gflops": gflops, "towers": rows, "devices": str(jax.devices())}, f, indent=2)


if __name__ == "__main__":
    main()
