"""Compile-only figures for the docs' "Will it fit, and what will it cost?" tables (not a timed test).

  PYTHONPATH=. python -m benchmarks.compile_only --target tpu:v5e:2x4 [--config configs/smarter.py]
      [--set towers.dtype=\\"bfloat16\\" ...] [--search 1] [--workdir /tmp/compile_only]

Runs ``aot.compile_run`` on the config (default: the paper's, fused base towers in bf16, batch 128) for each
``--target`` and prints one summary line per target: peak bytes per chip per program, the largest batch,
estimated extraction instances/s, train steps/s and the run's time, and the wall time of the compiles.
"""

import argparse
import ast
import importlib.util
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", action="append", required=True)
    parser.add_argument("--config", default="configs/smarter.py")
    parser.add_argument("--set", action="append", default=[], help="FIELD=PYTHON_LITERAL")
    parser.add_argument("--search", type=int, default=1)
    parser.add_argument("--workdir", default="/tmp/compile_only")
    args = parser.parse_args()
    lines = []
    for target in args.target:
        cfg = load_config(args.config, args.set)
        out = pathlib.Path(args.workdir) / target.replace(":", "_")
        start = time.perf_counter()
        try:
            result = aot.compile_run(cfg, out, target, search_budget=args.search)
        except aot.DoesNotFit as e:
            print(f"REFUSED: {e}")
            result = json.loads((out / aot.output.JSON_FILE).read_text())
        lines.append(summary(target, result, time.perf_counter() - start))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
