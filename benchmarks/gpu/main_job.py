"""The main job on a medium synthetic set with random towers (base size on a GPU), timed as a user runs it.

Writes random-init HF tower directories (dinov2-base and siglip-base-patch16-224 configs, as
``benchmarks.throughput`` does; ``--towers tiny``: the trainer's own tiny towers), then runs
``python -m smartvlm_jax.main --config configs/smarter.py`` on synthetic puzzles (the 11 families,
``--per-puzzle`` each) with the fused variant, and writes a JSON summary: wall seconds of the tower
writing and of the run, the run's own per-stage ``timing`` from its results.json where it records one,
test S_acc/O_acc and the devices. ``--compile-only TARGET`` instead compiles the same run for TARGET
(``smartvlm_jax.main --compile_only``; the released base towers' configs, which the random towers copy)
and writes its prediction (``compile_report.json``) as the summary: run.sh's prediction for the lent GPU.

    python -m benchmarks.gpu.main_job --workdir DIR [--per-puzzle 300] [--towers base|tiny]
        [--dtype bfloat16] [--epochs 3] [--batch 128] [--json out.json] [--compile-only gpu:h100:1x1]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--per-puzzle", type=int, default=300)
    parser.add_argument("--towers", choices=["base", "tiny"], default="base")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=4, help="grain worker processes")
    parser.add_argument("--json", default="")
    parser.add_argument("--compile-only", default="", help="a --compile_only target: predict, run nothing")
    parser.add_argument("--search", type=int, default=2, help="with --compile-only: compiles per program")
    args = parser.parse_args(argv)
    work = pathlib.Path(args.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    overrides = [
        "--config.synthetic.enabled=True",
        f"--config.synthetic.per_puzzle={args.per_puzzle}",
        f"--config.data.data_tot={args.per_puzzle}",
        f"--config.towers.dtype={args.dtype}",
        f"--config.num_epochs={args.epochs}",
        f"--config.batch_size={args.batch}",
        f"--config.eval_batch_size={args.batch}",
        f"--config.worker_count={args.workers}",
    ]
    summary: dict = {"per_puzzle": args.per_puzzle, "towers": args.towers, "dtype": args.dtype}
    start = time.perf_counter()
    if args.towers == "tiny":
        overrides.append("--config.towers.tiny=True")
    elif args.compile_only:  # the released configs: the random base towers' shapes, nothing written
        pass
    else:
        from benchmarks import throughput
        from tests.support import tiny_towers

        dirs = throughput.write_towers(work / "towers", "base", tiny_towers.sentences())
        overrides += [f"--config.towers.dinov2={dirs['dinov2']}", f"--config.towers.siglip={dirs['siglip']}"]
    summary["write_towers_s"] = time.perf_counter() - start
    cmd = [
        sys.executable,
        "-m",
        "smartvlm_jax.main",
        "--config",
        "configs/smarter.py",
        "--workdir",
        str(work / "run"),
        *overrides,
    ]
    if args.compile_only:
        cmd += [f"--compile_only={args.compile_only}", f"--compile_only_search={args.search}"]
    print(" ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, check=False)
    summary["run_wall_s"] = time.perf_counter() - start
    summary["returncode"] = proc.returncode
    results_path = work / "run" / "results.json"
    report_path = work / "run" / "compile_report.json"
    if args.compile_only and report_path.exists():
        summary["compile_only"] = json.loads(report_path.read_text())
    elif results_path.exists():
        results = json.loads(results_path.read_text())
        test = results.get("test", {})
        summary.update({k: results[k] for k in ("timing", "best_epoch", "steps") if k in results})
        summary["test"] = {k: test[k] for k in ("S_acc", "O_acc", "greedy_S_acc", "n") if k in test}
    print(json.dumps(summary, indent=2), flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    if proc.returncode:
        sys.exit(proc.returncode)
    return summary


if __name__ == "__main__":
    main()
