"""Compile-only figures for the docs' "Will it fit, and what will it cost?" tables (not a timed test).

  PYTHONPATH=. python -m benchmarks.compile_only --target tpu:v5e:2x4 [--config configs/smarter.py]
      [--set towers.dtype=\\"bfloat16\\" ...] [--search 1] [--workdir /tmp/compile_only]
  PYTHONPATH=. python -m benchmarks.compile_only --targets tpu:v5e:2x4,tpu:v4:2x2x4 --presets paper,large
      --attention xla,flash --search 4 --markdown     # the docs' table (docs/tpu.md, "Will it fit")

Runs ``aot.compile_run`` on the config (default: the paper's, fused base towers in bf16, batch 128) for each
``--target`` and prints one summary line per target: peak bytes per chip per program, the largest batch,
estimated extraction instances/s, train steps/s and the run's time, and the wall time of the compiles.

  PYTHONPATH=. python -m benchmarks.compile_only --calibrate [--calibrate-batch 4] [--repeats 5]

compiles the towers' program for this CPU instead (``aot.calibrate``), times that executable in rounds
interleaved with a bf16 matmul and a copy (this host's peak FLOP/s and bandwidth, measured under the same
load), and prints the roofline time, the measured time, their ratio and the load average.
"""

import argparse
import ast
import importlib.util
import json
import os
import pathlib
import time

from smartvlm_jax import aot


def load_config(path: str, overrides: list[str]):
    spec = importlib.util.spec_from_file_location("compile_only_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.towers.dtype = "bfloat16"
    for item in overrides:
        key, value = item.split("=", 1)
        node = cfg
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = ast.literal_eval(value)
    return cfg


# Tower presets on top of --config: the paper's base towers, and the large released towers
PRESETS = {
    "paper": [],
    "large": ['towers.dinov2="facebook/dinov2-large"', 'towers.siglip="google/siglip-so400m-patch14-384"'],
}


def markdown_row(preset: str, attention: str, result: dict, wall: float) -> str:
    """One row of the docs' table: peak GiB per chip and largest batch per chip of each program, the
    estimate's rates and the recipe's time, tower passes beside the reference design's, compile seconds."""
    progs = {p["name"]: p for p in result["programs"]}
    towers, train = progs["towers"], progs.get("train_step") or progs["member_step"]
    e = result["estimate"]
    ref_s = e["reference_tower_passes"] / e["extraction_images_per_s"] if e["extraction_images_per_s"] else 0

    def batch(p):
        return p["max_per_device_batch"] if p["max_per_device_batch"] >= 0 else "-"

    first = sum(p["compile_s"] for p in progs.values())
    return (
        f"| {preset} | {result['target']} | {attention} | {towers['peak_bytes'] / 2**30:.2f} "
        f"({towers['per_device_batch']}) | {batch(towers)} | {train['peak_bytes'] / 2**30:.2f} "
        f"({train['per_device_batch']}) | {batch(train)} | {e['extraction_images_per_s']:,.0f} "
        f"| {e['train_steps_per_s']:,.0f} | {e['seconds']['total']:.1f} | {e['chip_hours']:.3f} "
        f"| {e['tower_passes']:,} / {e['reference_tower_passes']:,} | {ref_s:.1f} "
        f"| {first:.0f} / {wall:.0f} |"
    )


MARKDOWN_HEAD = (
    "| towers | target | attention | towers peak GiB/chip (batch) | towers max batch/chip "
    "| train step peak GiB/chip (batch) | train max batch/chip | extraction instances/s | train steps/s "
    "| recipe s | chip-hours | tower passes: ours / reference | reference's tower passes s "
    "| compile s: run's batch / all |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def summary(target: str, result: dict, wall: float) -> str:
    progs = {p["name"]: p for p in result["programs"]}
    e = result["estimate"]
    peaks = ", ".join(
        f"{n} {p['peak_bytes'] / 2**30:.2f} GiB (max {p['max_global_batch']})" for n, p in progs.items()
    )
    return (
        f"{target}: {peaks}; extraction {e['extraction_images_per_s']:.0f} inst/s, "
        f"train {e['train_steps_per_s']:.0f} steps/s, run {e['seconds']['total']:.0f} s "
        f"({e['chip_hours']:.3f} chip-h); tower passes {e['tower_passes']:,} vs reference "
        f"{e['reference_tower_passes']:,}; compiles {wall:.0f} s wall"
    )


def calibrate(args) -> dict:
    """The estimator's roofline time of the towers' program on this CPU against its measured time."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import timing
    from smartvlm_jax.aot import calibrate as cal
    from smartvlm_jax.aot import programs, targets

    targets.compile_only_environment()
    cfg = load_config(args.config, args.set)
    cfg.batch_size = cfg.eval_batch_size = args.calibrate_batch
    towers = programs.plan(cfg, targets.parse("cpu"), args.workdir).programs[0]
    start = time.perf_counter()
    figures, executable = cal.compile_program(towers, towers.batch)
    compile_s = time.perf_counter() - start
    tower_args = cal.random_args(executable)
    n, copy_mib = args.matmul_size, args.copy_mib
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.bfloat16)
    matmul = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
    big = jnp.ones((copy_mib << 18,), jnp.float32)
    copy = jax.jit(lambda x: x + 1)  # reads and writes every byte once
    load_before = os.getloadavg()
    t = timing.time_rounds(
        {"towers": lambda: executable(*tower_args), "matmul": lambda: matmul(a), "copy": lambda: copy(big)},
        args.repeats,
    )
    chip = cal.host_chip(
        2 * n**3 / t["matmul"].median,
        2 * big.nbytes / t["copy"].median,
        f"measured: {n}x{n} bf16 matmul (f32 accumulation) and {copy_mib} MiB float32 copy, medians",
    )
    result = cal.calibration(figures, chip, t["towers"].median, "towers").to_json()
    # XLA's cost analysis counts a while loop's body once: past CPU_GROUP_ROWS token rows the CPU towers
    # map over groups of images (xla.group_size), and the FLOPs and bytes are those of one group.
    loops = executable.as_text().count(" while(")
    if loops:
        print(
            f"WARNING: {loops} while loop(s) in the program: FLOPs count one iteration; use a smaller batch"
        )
    result.update(
        while_loops=loops,
        compile_s=compile_s,
        dtype=str(cfg.towers.dtype),
        towers_spread=t["towers"].spread,
        load_average=[load_before, os.getloadavg()],
        cpus=os.cpu_count(),
    )
    print(
        f"calibration on this CPU ({os.cpu_count()} cores, load {load_before[0]:.1f} -> "
        f"{os.getloadavg()[0]:.1f}): towers at batch {result['batch']} ({result['dtype']}): "
        f"{result['flops'] / 1e9:.0f} GFLOP, {result['bytes_accessed'] / 1e9:.2f} GB accessed; peaks "
        f"{chip.peak_flops / 1e12:.3f} TFLOP/s, {chip.hbm_bandwidth / 1e9:.1f} GB/s (measured); roofline "
        f"{result['roofline_s']:.2f} s ({result['bound']}-bound), measured {result['measured_s']:.2f} s "
        f"(spread {result['towers_spread']:.2f}): ratio {result['ratio']:.2f}; compile {compile_s:.0f} s"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", action="append", default=[])
    parser.add_argument("--targets", default="", help="comma-separated targets (with --target: both)")
    parser.add_argument("--presets", default="paper", help=f"comma-separated, of {sorted(PRESETS)}")
    parser.add_argument("--attention", default="xla", help="comma-separated towers.attention values")
    parser.add_argument("--markdown", action="store_true", help="print the docs' table (one row per run)")
    parser.add_argument("--calibrate", action="store_true", help="the roofline against this CPU's time")
    parser.add_argument("--calibrate-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--copy-mib", type=int, default=1024)
    parser.add_argument("--config", default="configs/smarter.py")
    parser.add_argument("--set", action="append", default=[], help="FIELD=PYTHON_LITERAL")
    parser.add_argument("--search", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/compile_only")
    args = parser.parse_args()
    if args.calibrate:
        result = calibrate(args)
        out = pathlib.Path(args.workdir) / "calibration.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        return
    lines, rows = [], [MARKDOWN_HEAD]
    targets = args.target + [t for t in args.targets.split(",") if t]
    for preset in args.presets.split(","):
        for target in targets:
            for attention in args.attention.split(","):
                cfg = load_config(
                    args.config, PRESETS[preset] + args.set + [f"towers.attention={attention!r}"]
                )
                out = pathlib.Path(args.workdir) / f"{preset}_{attention}_{target.replace(':', '_')}"
                start = time.perf_counter()
                search = args.search if attention == "xla" else 1  # another kernel: its memory at the batch
                try:
                    result = aot.compile_run(cfg, out, target, search_budget=search, print_table=False)
                except aot.DoesNotFit as e:
                    print(f"REFUSED: {e}")
                    result = json.loads((out / aot.output.JSON_FILE).read_text())
                except Exception as e:  # a kernel the compiler refuses: the row says why
                    why = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                    rows.append(f"| {preset} | {target} | {attention} | does not compile: {why} |")
                    print(rows[-1], flush=True)
                    continue
                wall = time.perf_counter() - start
                lines.append(f"{preset} {attention} " + summary(target, result, wall))
                rows.append(markdown_row(preset, attention, result, wall))
                print(lines[-1], flush=True)
                if args.markdown:  # as they come: a long table's first rows are not lost
                    print(rows[-1], flush=True)
    if args.markdown:
        load = os.getloadavg()
        print(
            f"\n(load average at the end {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f}; "
            f"{os.cpu_count()} cores)\n"
        )
        print("\n".join(rows))


if __name__ == "__main__":
    main()
