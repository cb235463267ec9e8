"""Frozen-tower throughput: JAX fp32 / bf16 vs transformers PyTorch fp32 / bf16, same inputs, same run.

Builds random-init towers (dinov2-base, siglip-base-patch16-224 vision and text; ``--tiny``: the tiny test
configs) with transformers, loads the same weights into JAX through the converter, and times the four
variants of each tower's forward (``last_hidden_state`` of a batch) in interleaved rounds, so a change of
machine load hits them alike. Prints the median (and best) items/s of each, the instances/s of the three
towers together (one DINOv2 image + one SigLIP image + one question per puzzle instance), the max |diff|
of JAX vs PyTorch in fp32, the relative error of bf16 mean-pooled features against fp32, the load
average, and the matmul rate of each framework and dtype. With ``--peak-tflops`` (the chip's dense peak,
e.g. 989 for an H100/H200 SXM in bf16) each variant's MFU: model FLOPs (:func:`forward_flops`, counted
from the config) per second over that peak.

PyTorch runs on ``--torch-device`` (CUDA when visible; timings synchronised), JAX on its default backend.
On a GPU, JAX's float32 dots use TF32 unless told otherwise, PyTorch's do not: the fp32 parity figure is
taken with ``jax.default_matmul_precision("float32")`` and, beside it, at JAX's default precision.

    python -m benchmarks.towers [--batches 8[,32,...]] [--rounds 8] [--towers dinov2-base,...]
        [--fp32-batches 8] [--peak-tflops 989] [--torch-device cuda] [--tiny] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from benchmarks import timing
from smartvlm_jax import cli, towers

CONFIGS = {
    "dinov2-base": (
        "vision",
        transformers.Dinov2Model,
        lambda: transformers.Dinov2Config(image_size=518, patch_size=14),
    ),
    "siglip-base vision": ("vision", transformers.SiglipVisionModel, transformers.SiglipVisionConfig),
    "siglip-base text": ("text", transformers.SiglipTextModel, transformers.SiglipTextConfig),
}
TINY_CONFIGS = {  # the same three towers at the test suite's tiny sizes (--tiny: dry runs)
    "dinov2-base": lambda: transformers.Dinov2Config(
        **{k: v for k, v in towers.tiny_config("dinov2").items() if k != "model_type"}
    ),
    "siglip-base vision": lambda: transformers.SiglipVisionConfig(
        **towers.tiny_config("siglip")["vision_config"]
    ),
    "siglip-base text": lambda: transformers.SiglipTextConfig(**towers.tiny_config("siglip")["text_config"]),
}
VARIANTS = ("jax fp32", "jax bf16", "torch fp32", "torch bf16")


def matmul_gflops(rounds: int, torch_device: str, n: int) -> dict[str, float]:
    """n^3 matmul GFLOP/s: JAX and PyTorch, fp32 and bf16 (JAX bf16 accumulates in fp32), random data."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(a, jnp.bfloat16)
    f32 = jax.jit(lambda x: x @ x)
    bf16 = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
    ta = torch.from_numpy(a).to(torch_device)
    tb = ta.bfloat16()

    times = timing.time_rounds(
        {
            "jax fp32": lambda: f32(ja),
            "jax bf16": lambda: bf16(jb),
            "torch fp32": lambda: ta @ ta,
            "torch bf16": lambda: tb @ tb,
        },
        rounds,
    )
    return {k: 2 * n**3 / v.min / 1e9 for k, v in times.items()}


def tokens(config: Any, part: str, image_size: int) -> int:
    """Sequence length of one item: text positions, or patches (+ the CLS token for DINOv2)."""
    if part == "text":
        return 64
    grid = (image_size // config.patch_size) ** 2
    return grid + (1 if config.model_type == "dinov2" else 0)


def forward_flops(config: Any, part: str, image_size: int) -> float:
    """Model FLOPs of one item's forward (multiply-adds x 2): patch embedding, q/k/v/out projections,
    attention scores and values, MLP. LayerNorms, softmax and GELU are left out (< 1 %), as MFU counts do."""
    t, d = tokens(config, part, image_size), config.hidden_size
    ffn = getattr(config, "intermediate_size", None) or int(d * config.mlp_ratio)
    per_layer = 2 * t * (4 * d * d + 2 * d * ffn) + 2 * 2 * t * t * d
    embed = 2 * t * config.patch_size**2 * config.num_channels * d if part == "vision" else 0
    return float(embed + config.num_hidden_layers * per_layer)


class TowerBench:
    """One tower in JAX (fp32, bf16) and PyTorch (fp32, bf16) on the same random-init weights."""

    def __init__(self, name: str, workdir: str, torch_device: str, tiny: bool):
        self.name, self.torch_device = (name.replace("-base", "-tiny") if tiny else name), torch_device
        self.part, cls, make_config = CONFIGS[name]
        self.config = (TINY_CONFIGS[name] if tiny else make_config)()
        torch.manual_seed(0)
        model = cls(self.config).eval()
        path = os.path.join(workdir, name.replace(" ", "_"))
        model.save_pretrained(path)
        self.jax = {dt: towers.load(path, part=self.part, dtype=dt) for dt in ("float32", "bfloat16")}
        bf16 = cls(self.config).eval()
        bf16.load_state_dict(model.state_dict())
        self.torch = {"fp32": model.to(torch_device), "bf16": bf16.to(torch.bfloat16).to(torch_device)}
        self.image_size = self.jax["float32"].image_size if self.part == "vision" else 0
        self.flops_per_item = forward_flops(self.config, self.part, self.image_size)

    def inputs(self, batch: int) -> tuple[jax.Array, dict[str, torch.Tensor]]:
        rng = np.random.default_rng(batch)
        if self.part == "text":
            ids = rng.integers(0, self.config.vocab_size, (batch, 64)).astype(np.int32)
            return jnp.asarray(ids), {"input_ids": torch.from_numpy(ids.astype(np.int64))}
        s = self.image_size
        pixels = rng.standard_normal((batch, s, s, 3)).astype(np.float32)
        return jnp.asarray(pixels), {"pixel_values": torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())}

    def run(self, batch: int, rounds: int, fp32: bool, peak_flop_per_s: float) -> dict[str, Any]:
        """Times the variants at ``batch`` (fp32 ones only if ``fp32``); items/s, MFU, accuracy figures."""
        inputs, torch_inputs = self.inputs(batch)
        dev = {k: v.to(self.torch_device) for k, v in torch_inputs.items()}
        dev_bf16 = {k: v.bfloat16() if v.is_floating_point() else v for k, v in dev.items()}

        def torch_fn(dtype: str) -> Callable[[], torch.Tensor]:
            kwargs = dev_bf16 if dtype == "bf16" else dev

            def run() -> torch.Tensor:
                with torch.inference_mode():
                    return self.torch[dtype](**kwargs).last_hidden_state

            return run

        fns: dict[str, Callable[[], Any]] = {
            "jax bf16": lambda: self.jax["bfloat16"].encode(inputs),
            "torch bf16": torch_fn("bf16"),
        }
        if fp32:
            fns["jax fp32"] = lambda: self.jax["float32"].encode(inputs)
            fns["torch fp32"] = torch_fn("fp32")
        times = timing.time_rounds(fns, rounds)
        outs = {
            k: np.asarray(fn()) if k.startswith("jax") else fn().float().cpu().numpy()
            for k, fn in fns.items()
        }
        per_s = {k: batch / v.median for k, v in times.items()}
        row: dict[str, Any] = {
            "tower": self.name,
            "batch": batch,
            "tokens": tokens(self.config, self.part, self.image_size),
            "flops_per_item": self.flops_per_item,
            "per_s": per_s,
            "best_per_s": {k: batch / v.min for k, v in times.items()},
            "tflop_per_s": {k: v * self.flops_per_item / 1e12 for k, v in per_s.items()},
        }
        if peak_flop_per_s > 0:
            row["mfu"] = {k: v * self.flops_per_item / peak_flop_per_s for k, v in per_s.items()}
        pooled = {k: v.mean(axis=1) for k, v in outs.items()}
        rel = lambda a, b: float(np.linalg.norm(pooled[a] - pooled[b]) / np.linalg.norm(pooled[b]))
        if fp32:
            with jax.default_matmul_precision("float32"):
                exact = np.asarray(self.jax["float32"].encode(inputs))
            row["fp32_max_abs_diff_jax_vs_torch"] = float(np.abs(exact - outs["torch fp32"]).max())
            row["fp32_default_precision_max_abs_diff"] = float(
                np.abs(outs["jax fp32"] - outs["torch fp32"]).max()
            )
            row["bf16_pooled_rel_err_jax"] = rel("jax bf16", "jax fp32")
            row["bf16_pooled_rel_err_torch"] = rel("torch bf16", "torch fp32")
        else:
            row["bf16_pooled_rel_err_jax_vs_torch"] = rel("jax bf16", "torch bf16")
        return row


def instances_per_s(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Instances/s of the towers together: one item of each tower an instance, run one after the other."""
    variants = set.intersection(*(set(r[key]) for r in rows))
    return {v: 1.0 / sum(1.0 / r[key][v] for r in rows) for v in VARIANTS if v in variants}


def with_instances(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` plus, for each batch that has every tower, an "instances (all 3)" row."""
    out = list(rows)
    for batch in sorted({r["batch"] for r in rows}):
        same = [r for r in rows if r["batch"] == batch]
        if len({r["tower"] for r in same}) == len(CONFIGS):
            out.append(
                {
                    "tower": "instances (all 3)",
                    "batch": batch,
                    "per_s": instances_per_s(same, "per_s"),
                    "best_per_s": instances_per_s(same, "best_per_s"),
                }
            )
    return out


def format_report(report: dict[str, Any]) -> str:
    """The console table: items/s per variant (best in brackets), ratios, MFU, accuracy figures."""
    lines = [
        f"jax {report['jax']} ({report['backend']}), torch {report['torch']} on {report['torch_device']}, "
        f"{report['rounds']} rounds",
        f"matmul GFLOP/s (n={report['matmul_n']}): "
        + ", ".join(f"{k} {v:.0f}" for k, v in report["matmul_gflops"].items()),
        "items/s, median of the rounds (best in brackets)" + (", MFU %" if report["peak_tflops"] else ""),
    ]
    head = (
        f"{'tower':<20}{'batch':>6}"
        + "".join(f"{v:>19}" for v in VARIANTS)
        + f"{'bf16 J/T':>10}{'fp32 J/T':>10}"
    )
    lines.append(head)
    for r in with_instances(report["towers"]):
        ps, best = r["per_s"], r["best_per_s"]
        cells = "".join(f"{ps[v]:>10.1f} ({best[v]:>6.1f})" if v in ps else f"{'-':>19}" for v in VARIANTS)
        ratios = "".join(
            f"{ps[a] / ps[b]:>10.2f}" if a in ps and b in ps else f"{'-':>10}"
            for a, b in (("jax bf16", "torch bf16"), ("jax fp32", "torch fp32"))
        )
        lines.append(f"{r['tower']:<20}{r['batch']:>6}{cells}{ratios}")
        if "mfu" in r:
            mfu = "".join(f"{100 * r['mfu'][v]:>18.1f}%" if v in r["mfu"] else f"{'':>19}" for v in VARIANTS)
            lines.append(f"{'  MFU':<26}{mfu}")
    lines.append(
        f"{'tower':<20}{'batch':>6}{'fp32 max|J-T|':>15}{'(JAX default prec.)':>21}"
        f"{'bf16 rel.err JAX':>18}{'bf16 rel.err torch':>20}  (mean-pooled)"
    )
    for r in report["towers"]:
        if "fp32_max_abs_diff_jax_vs_torch" in r:
            lines.append(
                f"{r['tower']:<20}{r['batch']:>6}{r['fp32_max_abs_diff_jax_vs_torch']:>15.1e}"
                f"{r['fp32_default_precision_max_abs_diff']:>21.1e}"
                f"{r['bf16_pooled_rel_err_jax']:>18.1e}"
                f"{r['bf16_pooled_rel_err_torch']:>20.1e}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cli.keep_jax_off_absent_accelerators()  # an installed libtpu or CUDA plugin stays quiet here
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", "--batch", default="8", help="comma-separated batch sizes")
    parser.add_argument("--fp32-batches", default="", help="batches that also time fp32 (default: all)")
    parser.add_argument("--rounds", type=int, default=8, help="a multiple of 4 rotates the order evenly")
    parser.add_argument("--towers", default=",".join(CONFIGS), help="comma-separated subset of the towers")
    parser.add_argument("--torch-device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="dense peak of the chip, for MFU")
    parser.add_argument("--matmul-n", type=int, default=0, help="matmul size (default 2048 CPU, 8192 GPU)")
    parser.add_argument("--tiny", action="store_true", help="tiny tower configs (dry runs, tests)")
    parser.add_argument("--json", default="", help="also write the results here (after every tower)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    fp32_batches = {int(b) for b in args.fp32_batches.split(",")} if args.fp32_batches else set(batches)
    unknown = [t for t in args.towers.split(",") if t not in CONFIGS]
    if unknown:
        parser.error(f"--towers: unknown {unknown}; known: {list(CONFIGS)}")
    gpu = args.torch_device.startswith("cuda")
    n = args.matmul_n or (8192 if gpu else 2048)
    report: dict[str, Any] = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_device": args.torch_device,
        "torch_threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "peak_tflops": args.peak_tflops,
        "load_before": os.getloadavg(),
        "matmul_n": n,
        "tiny": args.tiny,
        "towers": [],
    }
    report["matmul_gflops"] = matmul_gflops(args.rounds, args.torch_device, n)

    def save() -> None:
        if args.json:
            every = {**report, "towers": with_instances(report["towers"])}
            pathlib.Path(args.json).write_text(json.dumps(every, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as workdir:
        for name in args.towers.split(","):
            bench = TowerBench(name, workdir, args.torch_device, args.tiny)
            for batch in batches:
                report["towers"].append(
                    bench.run(batch, args.rounds, batch in fp32_batches, args.peak_tflops * 1e12)
                )
                save()
            del bench
            if gpu:
                torch.cuda.empty_cache()
    report["load_after"] = os.getloadavg()
    save()
    print(format_report(report))
    return report


if __name__ == "__main__":
    main()
