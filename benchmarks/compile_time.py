"""Compile seconds of the head's programs on this CPU: the train-state initialiser, the train step and the
eval step, for the smoke head and for the paper head on the 101 SMART-101 puzzles (issue 30).

Each program is traced, lowered and compiled once in this process with the persistent compilation cache
off, at the run's shapes (one CPU device): the smoke config's 11 synthetic puzzles on tiny towers, and
configs/smarter.py (the paper's SMARTER head) on all 101 puzzles with the released base towers' widths
and class counts estimated from the shipped metadata (the compile-only report's head,
``aot.programs``). Prints wall and CPU seconds and the optimised HLO's instruction count of each.

    python -m benchmarks.compile_time [--heads smoke,paper101] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time

import jax
import numpy as np

from smartvlm_jax import cli, optim, parallel
from smartvlm_jax.aot import programs
from smartvlm_jax.features import batches
from smartvlm_jax.train import ahead
from smartvlm_jax.train.group import Group


def head_config(name: str):
    from configs import smarter, smoke

    if name == "smoke":
        return smoke.get_config()
    config = smarter.get_config()
    config.data.puzzle_ids = "all"
    config.towers.dinov2 = config.towers.siglip = ""  # the released base towers' configs
    return config


def instructions(hlo_text: str) -> int:
    return sum(1 for line in hlo_text.splitlines() if re.match(r"\s+(ROOT )?%?\S+ = ", line))


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def measure(name: str) -> dict:
    config = head_config(name)
    mesh = parallel.make_mesh(config.mesh.fsdp, jax.devices()[:1])
    frozen, _, _ = programs.abstract_towers(config.towers, config.model.variant, "cpu")
    ids, classes, rows, _ = programs.head_data(config)
    run = programs.make_run(config, "", mesh, config.towers, ids, classes, frozen)
    group = Group(run, [run], None)
    total_steps = int(config.num_epochs) * math.ceil(rows["train"] / config.batch_size)
    tx = optim.make_optimizer(config.optim, total_steps)
    out = {"puzzles": len(ids), "batch_size": int(config.batch_size)}
    (traced, arg), _, _ = timed(lambda: ahead.trace_initialiser(group, tx))
    init, wall, cpu = timed(lambda: ahead.compile_initialiser(traced, arg))
    out["initial_state"] = {"wall_s": wall, "cpu_s": cpu, "hlo": instructions(init.compiled.as_text())}
    abstract_state = init.abstract_state
    steps = group.steps(tx, total_steps, None, ahead.shardings(abstract_state))
    batch = batches.frozen_feature_batch(frozen, config.batch_size, parallel.batch_sharding(mesh))
    args = steps.args(batch, None, np.ones(1, bool))
    train, wall, cpu = timed(lambda: steps.train.lower(abstract_state, *args).compile())
    out["train_step"] = {"wall_s": wall, "cpu_s": cpu, "hlo": instructions(train.as_text())}
    eval_batch = {
        k: jax.ShapeDtypeStruct((config.eval_batch_size, *v.shape[1:]), v.dtype, sharding=v.sharding)
        for k, v in batch.items()
    }
    predict, wall, cpu = timed(lambda: steps.predict.lower(abstract_state.params, eval_batch, None).compile())
    out["eval_step"] = {"wall_s": wall, "cpu_s": cpu, "hlo": instructions(predict.as_text())}
    return out


def main() -> None:
    cli.keep_jax_off_absent_accelerators()  # an installed libtpu or CUDA plugin stays quiet here
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", default="smoke,paper101")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)
    results = {name: measure(name) for name in args.heads.split(",")}
    print("| head | puzzles | program | compile wall s | compile CPU s | HLO instructions |")
    print("|---|---:|---|---:|---:|---:|")
    for name, r in results.items():
        for prog in ("initial_state", "train_step", "eval_step"):
            p = r[prog]
            print(f"| {name} | {r['puzzles']} | {prog} | {p['wall_s']:.2f} | {p['cpu_s']:.2f} | {p['hlo']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
