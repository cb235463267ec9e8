"""Frozen-tower throughput: JAX fp32 / bf16 vs transformers PyTorch fp32 / bf16, same inputs, same run.

Builds random-init base towers (dinov2-base, siglip-base-patch16-224 vision and text) with transformers,
loads the same weights into JAX through the converter, and times the four variants of each tower's forward
(``last_hidden_state`` of a batch) in interleaved rounds, so a change of machine load hits them alike.
Prints the median (and best) items/s of each, the instances/s of the three towers together (one DINOv2
image + one SigLIP image + one question per puzzle instance), the max |diff| of JAX vs PyTorch, the
relative error of JAX bf16's mean-pooled features against JAX fp32, the load average, and this machine's
2048^3 matmul GFLOP/s in each framework and dtype.

    python -m benchmarks.towers [--batch 8] [--rounds 8] [--towers dinov2-base,...] [--json out.json]
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
VARIANTS = ("jax fp32", "jax bf16", "torch fp32", "torch bf16")


def timed_rounds(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each function, ``rounds`` times, interleaved (after one warm-up call each).

    The order rotates every round, so each function follows each other one equally often: a call runs
    slower right after a PyTorch call (its OpenMP threads keep spinning, and AMX/AVX-512 work lowers the
    clock for a while), and a fixed order would charge that to the same function every round.
    """
    for fn in fns.values():
        fn()
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return times


def matmul_gflops(rounds: int) -> dict[str, float]:
    """2048^3 matmul GFLOP/s: JAX and PyTorch, fp32 and bf16 (JAX bf16 accumulates in fp32)."""
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(a, jnp.bfloat16)
    f32 = jax.jit(lambda x: x @ x)
    bf16 = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
    ta, tb = torch.from_numpy(a), torch.from_numpy(a).bfloat16()
    times = timed_rounds(
        {
            "jax fp32": lambda: f32(ja).block_until_ready(),
            "jax bf16": lambda: bf16(jb).block_until_ready(),
            "torch fp32": lambda: ta @ ta,
            "torch bf16": lambda: tb @ tb,
        },
        rounds,
    )
    return {k: 2 * n**3 / min(v) / 1e9 for k, v in times.items()}


def bench_tower(name: str, batch: int, rounds: int, workdir: str) -> dict[str, Any]:
    """Times the four variants of one tower; returns items/s (median, best) and the accuracy figures."""
    part, cls, config = CONFIGS[name]
    torch.manual_seed(0)
    model = cls(config).eval()
    path = os.path.join(workdir, name.replace(" ", "_"))
    model.save_pretrained(path)
    jax_towers = {dt: towers.load(path, part=part, dtype=dt) for dt in ("float32", "bfloat16")}
    rng = np.random.default_rng(0)
    if part == "text":
        ids = rng.integers(0, config.vocab_size, (batch, 64)).astype(np.int32)
        inputs = jnp.asarray(ids)
        torch_inputs = {"input_ids": torch.from_numpy(ids.astype(np.int64))}
    else:
        s = jax_towers["float32"].image_size
        pixels = rng.standard_normal((batch, s, s, 3)).astype(np.float32)
        inputs = jnp.asarray(pixels)
        torch_inputs = {"pixel_values": torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())}
    models = {"torch fp32": model, "torch bf16": cls(config).eval()}
    models["torch bf16"].load_state_dict(model.state_dict())
    models["torch bf16"] = models["torch bf16"].to(torch.bfloat16)
    bf16_inputs = {k: v.bfloat16() if v.is_floating_point() else v for k, v in torch_inputs.items()}

    def torch_fn(variant: str) -> Callable[[], torch.Tensor]:
        kwargs = bf16_inputs if variant.endswith("bf16") else torch_inputs

        def run() -> torch.Tensor:
            with torch.inference_mode():
                return models[variant](**kwargs).last_hidden_state

        return run

    fns: dict[str, Callable[[], Any]] = {
        "jax fp32": lambda: jax_towers["float32"].encode(inputs).block_until_ready(),
        "jax bf16": lambda: jax_towers["bfloat16"].encode(inputs).block_until_ready(),
        "torch fp32": torch_fn("torch fp32"),
        "torch bf16": torch_fn("torch bf16"),
    }
    times = timed_rounds(fns, rounds)
    outs = {
        "jax fp32": np.asarray(jax_towers["float32"].encode(inputs)),
        "jax bf16": np.asarray(jax_towers["bfloat16"].encode(inputs)),
        "torch fp32": fns["torch fp32"]().float().numpy(),
        "torch bf16": fns["torch bf16"]().float().numpy(),
    }
    pooled = {k: v.mean(axis=1) for k, v in outs.items()}

    def rel(a: str, b: str) -> float:
        return float(np.linalg.norm(pooled[a] - pooled[b]) / np.linalg.norm(pooled[b]))

    return {
        "tower": name,
        "batch": batch,
        "per_s": {k: batch / float(np.median(v)) for k, v in times.items()},
        "best_per_s": {k: batch / min(v) for k, v in times.items()},
        "fp32_max_abs_diff_jax_vs_torch": float(np.abs(outs["jax fp32"] - outs["torch fp32"]).max()),
        "bf16_pooled_rel_err_jax": rel("jax bf16", "jax fp32"),
        "bf16_pooled_rel_err_torch": rel("torch bf16", "torch fp32"),
    }


def instances_per_s(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Instances/s of the towers together: one item of each tower an instance, run one after the other."""
    return {v: 1.0 / sum(1.0 / r[key][v] for r in rows) for v in VARIANTS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8, help="a multiple of 4 rotates the order evenly")
    parser.add_argument("--towers", default=",".join(CONFIGS), help="comma-separated subset of the towers")
    parser.add_argument("--json", default="", help="also write the results here")
    args = parser.parse_args()
    load_before = os.getloadavg()
    gflops = matmul_gflops(args.rounds)
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.towers.split(","):
            rows.append(bench_tower(name, args.batch, args.rounds, workdir))
    load_after = os.getloadavg()
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, batch {args.batch}, {args.rounds} rounds")  # fmt: skip
    fmt_load = lambda la: "/".join(f"{x:.2f}" for x in la)  # noqa: E731
    print(f"load average (1/5/15 min): before {fmt_load(load_before)}, after {fmt_load(load_after)}")
    print("matmul 2048^3 GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in gflops.items()))
    print("items/s, median of the rounds (best in brackets)")
    print(f"{'tower':<22}" + "".join(f"{v:>18}" for v in VARIANTS) + f"{'bf16 J/T':>10}{'fp32 J/T':>10}")
    every = rows + (
        [{"tower": "instances (all 3)", "per_s": instances_per_s(rows, "per_s"),
          "best_per_s": instances_per_s(rows, "best_per_s")}] if len(rows) == len(CONFIGS) else []
    )  # fmt: skip
    for r in every:
        cells = "".join(f"{r['per_s'][v]:>10.2f} ({r['best_per_s'][v]:>5.2f})" for v in VARIANTS)
        ratio_bf = r["per_s"]["jax bf16"] / r["per_s"]["torch bf16"]
        ratio_fp = r["per_s"]["jax fp32"] / r["per_s"]["torch fp32"]
        print(f"{r['tower']:<22}{cells}{ratio_bf:>10.2f}{ratio_fp:>10.2f}")
    print(
        f"{'tower':<22}{'fp32 max|J-T|':>15}{'bf16 rel.err JAX':>18}{'bf16 rel.err torch':>20}  (mean-pooled)"
    )
    for r in rows:
        print(f"{r['tower']:<22}{r['fp32_max_abs_diff_jax_vs_torch']:>15.1e}"
              f"{r['bf16_pooled_rel_err_jax']:>18.1e}{r['bf16_pooled_rel_err_torch']:>20.1e}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"matmul_gflops": gflops, "towers": every, "load_before": load_before,
                       "load_after": load_after, "devices": str(jax.devices())}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
