"""The main job at SMART-101 scale, measured as it grows: ~1k, 10k and 100k instances.

For each size n (instances per puzzle; 101 puzzles): synthetic 101-puzzle data with n instances a puzzle
(``--workdir/data_<n>``, written once by 2 processes and reused), then ``python -m smartvlm_jax.main
--config configs/smart101_tiny.py`` (the smoke run's tiny towers, the paper recipe otherwise: data_tot n,
batch 128, 3 epochs) in a fresh process per run, timed by the run itself (results.json ``timing``: dataset
build, feature extraction, compilation, training, evaluation, checkpoints, plots, peak resident memory).
Prints a table of seconds and seconds per 1,000 instances per stage, writes ``scale.json`` and
``scale.png`` (seconds per stage against instances, log-log, with peak memory), and each run's test table.

``--towers-json`` (a ``benchmarks.towers --batches 32`` report of this machine) turns the base towers'
measured instances/s into what a base-tower run of each size would spend extracting features here.

    python -m benchmarks.scale --workdir DIR [--sizes 10,100,1000] [--split-types puzzle,fewshot,answer]
        [--split-size 1000] [--towers-json towers.json] [--feature-dtype float32]

``--sizes``: instances per puzzle of the instance-split runs; ``--split-types``: other split types, run at
``--split-size`` instances per puzzle. Each run starts from an empty run directory (data and TFDS builds
are reused).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure

from smartvlm_jax import cli, reports
from smartvlm_jax.data import synthetic

NUM_PUZZLES = 101
# Stages of results.json's timing, in the order a run meets them; features/* and compile/* are summed.
STAGES = ("dataset", "towers", "features", "compile", "train", "eval", "checkpoint", "plots")


def write_data(workdir: pathlib.Path, per_puzzle: int) -> tuple[pathlib.Path, float]:
    """The 101-puzzle synthetic set with ``per_puzzle`` instances each (reused if present); seconds spent."""
    root = workdir / f"data_{per_puzzle}"
    if root.exists():
        return root, 0.0
    start = time.perf_counter()
    tmp = workdir / f"data_{per_puzzle}.tmp"
    synthetic.write_dataset(str(tmp), per_puzzle=per_puzzle, seed=0, puzzle_ids="all", workers=2)
    tmp.rename(root)
    return root, time.perf_counter() - start


def run_job(workdir: pathlib.Path, root: pathlib.Path, per_puzzle: int, split_type: str, args) -> dict:
    """One main job in its own process; its results.json plus the process's wall seconds."""
    run_dir = workdir / f"run_{per_puzzle}_{split_type}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: a finished one would resume and time nothing
    cmd = [
        sys.executable,
        "-m",
        "smartvlm_jax.main",
        "--config",
        "configs/smart101_tiny.py",
        "--workdir",
        str(run_dir),
        "--config.synthetic.enabled=False",
        f"--config.data.root={root}",
        f"--config.data.data_dir={workdir / f'tfds_{per_puzzle}'}",
        f"--config.data.data_tot={per_puzzle}",
        f"--config.data.split_type={split_type}",
        f"--config.feature_dtype={args.feature_dtype}",
    ]
    start = time.perf_counter()
    with open(workdir / f"run_{per_puzzle}_{split_type}.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    results = reports.load_results(run_dir)
    if not results["timing"].get("train", {}).get("steps"):
        raise RuntimeError(f"{run_dir}: the run trained no step (see {log.name})")
    return {
        "per_puzzle": per_puzzle,
        "instances": per_puzzle * NUM_PUZZLES,
        "split_type": split_type,
        "wall_s": wall,
        "timing": results["timing"],
        "results": results,
    }


def stage_seconds(timing: dict[str, Any]) -> dict[str, float]:
    """Seconds per stage of :data:`STAGES` (features/<split> and compile/<step> summed)."""
    out = dict.fromkeys(STAGES, 0.0)
    for name, entry in timing.items():
        if isinstance(entry, dict):
            out[name.split("/")[0]] = out.get(name.split("/")[0], 0.0) + entry["seconds"]
    return out


def extracted_samples(timing: dict[str, Any]) -> int:
    """Samples the run's feature extraction ran the towers on (all splits)."""
    return sum(e.get("samples", 0) for k, e in timing.items() if k.startswith("features/"))


def samples_per_s(timing: dict[str, Any]) -> float:
    s = sum(e["seconds"] for k, e in timing.items() if k.startswith("features/"))
    return extracted_samples(timing) / s if s else float("nan")


def format_table(runs: list[dict]) -> str:
    """Seconds per stage, and seconds per 1,000 instances, for each run."""
    head = "| instances | split | " + " | ".join(STAGES) + " | wall | peak RSS | extraction | train |"
    lines = [head, "|" + "---|" * (len(STAGES) + 6)]
    for r in runs:
        sec = stage_seconds(r["timing"])
        train = r["timing"].get("train", {})
        cells = " | ".join(f"{sec[s]:.1f} ({1000 * sec[s] / r['instances']:.2f})" for s in STAGES)
        lines.append(
            f"| {r['instances']:,} | {r['split_type']} | {cells} | {r['wall_s']:.0f} s | "
            f"{r['timing']['peak_rss_kib'] / 1024:.0f} MiB | {samples_per_s(r['timing']):.0f} samples/s | "
            f"{train.get('steps_per_s', float('nan')):.1f} steps/s |"
        )
    return "\n".join(lines)


def growth(runs: list[dict], small: int, large: int) -> dict[str, float]:
    """Per stage: seconds per instance at ``large`` over those at ``small`` (instance split runs)."""
    by_n = {r["per_puzzle"]: r for r in runs if r["split_type"] == "instance"}
    if small not in by_n or large not in by_n:
        return {}
    a, b = (stage_seconds(by_n[n]["timing"]) for n in (small, large))
    na, nb = by_n[small]["instances"], by_n[large]["instances"]
    return {s: (b[s] / nb) / (a[s] / na) if a[s] > 0 else float("nan") for s in STAGES}


def plot(runs: list[dict], path: pathlib.Path) -> None:
    """Seconds per stage against instances (log-log), instance split; peak RSS on a second axis."""
    runs = sorted((r for r in runs if r["split_type"] == "instance"), key=lambda r: r["instances"])
    n = [r["instances"] for r in runs]
    fig = Figure(figsize=(8.0, 5.0), layout="constrained")
    ax = fig.subplots()
    for stage in STAGES:
        ax.plot(n, [max(stage_seconds(r["timing"])[stage], 1e-2) for r in runs], marker="o", label=stage)
    ax.plot(n, [r["wall_s"] for r in runs], marker="s", color="black", linewidth=2, label="whole run (wall)")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="instances (101 puzzles)",
        ylabel="seconds",
        title="Main job (tiny towers, paper recipe) by stage",
    )
    ax.grid(True, which="both", alpha=0.3)
    mem = ax.twinx()
    mem.plot(n, [r["timing"]["peak_rss_kib"] / 2**20 for r in runs], "k--", marker="^", label="peak RSS")
    mem.set_ylabel("peak resident memory (GiB)")
    mem.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()[0] + mem.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], loc="upper left", fontsize=8)
    fig.savefig(path, dpi=120)


def base_tower_estimate(runs: list[dict], towers_json: str) -> dict[int, float]:
    """Seconds the base towers would add to each size's extraction here, from their measured instances/s."""
    report = json.loads(pathlib.Path(towers_json).read_text())
    if report.get("tiny"):
        raise ValueError(f"{towers_json} measured tiny towers (benchmarks.towers --tiny): no base-tower rate")
    rate = {r["batch"]: r["per_s"] for r in report["towers"] if r["tower"].startswith("instances")}
    batch = 32 if 32 in rate else max(rate)
    per_s = max(rate[batch].get("jax bf16", 0.0), rate[batch].get("jax fp32", 0.0))
    return {r["instances"]: extracted_samples(r["timing"]) / per_s for r in runs}


def main(argv: list[str] | None = None) -> dict:
    cli.keep_jax_off_absent_accelerators()  # an installed libtpu or CUDA plugin stays quiet here
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--sizes", default="10,100,1000", help="instances per puzzle (x 101)")
    parser.add_argument("--split-types", default="", help="other split types, run at --split-size only")
    parser.add_argument("--split-size", type=int, default=1000, help="instances per puzzle of those runs")
    parser.add_argument("--feature-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--towers-json", default="", help="benchmarks.towers JSON (batch 32) of this machine")
    args = parser.parse_args(argv)
    workdir = pathlib.Path(args.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    plan = [(n, "instance") for n in map(int, args.sizes.split(","))]
    others = [(args.split_size, s) for s in args.split_types.split(",") if s]
    plan += [run for run in others if run not in plan]
    report: dict[str, Any] = {"generate_s": {}, "runs": []}
    for per_puzzle, split_type in plan:
        root, seconds = write_data(workdir, per_puzzle)
        report["generate_s"].setdefault(per_puzzle, seconds)
        print(f"{per_puzzle * NUM_PUZZLES:,} instances, {split_type} split ...", file=sys.stderr, flush=True)
        run = run_job(workdir, root, per_puzzle, split_type, args)
        print(f"  {run['wall_s']:.0f} s", file=sys.stderr, flush=True)
        report["runs"].append(run)
        summary = {**report, "runs": [{k: v for k, v in r.items() if k != "results"} for r in report["runs"]]}
        (workdir / "scale.json").write_text(json.dumps(reports.to_json_safe(summary), indent=2) + "\n")
    runs = report["runs"]
    print(format_table(runs))
    written = {int(n) * NUM_PUZZLES: s for n, s in report["generate_s"].items() if s}
    if written:
        print("data generation (2 processes): " + ", ".join(f"{n:,}: {s:.0f} s" for n, s in written.items()))
    sizes = sorted({r["per_puzzle"] for r in runs if r["split_type"] == "instance"})
    if len(sizes) >= 2:
        g = growth(runs, sizes[-2], sizes[-1])
        big, small = sizes[-1] * NUM_PUZZLES, sizes[-2] * NUM_PUZZLES
        print(
            f"cost per instance, {big:,} over {small:,} instances (target <= 1.5): "
            + ", ".join(f"{s} {v:.2f}" for s, v in g.items())
        )
        report["growth"] = g
    if args.towers_json:
        report["base_tower_extraction_s"] = base_tower_estimate(runs, args.towers_json)
        print(
            "base towers here would add to extraction: "
            + ", ".join(f"{n:,}: {s / 60:.0f} min" for n, s in report["base_tower_extraction_s"].items())
        )
    for r in runs:
        print(f"\n{r['instances']:,} instances, {r['split_type']} split, test:")
        print(reports.format_table(r["results"]["test"]))
    plot(runs, workdir / "scale.png")
    summary = {**report, "runs": [{k: v for k, v in r.items() if k != "results"} for r in runs]}
    (workdir / "scale.json").write_text(json.dumps(reports.to_json_safe(summary), indent=2) + "\n")
    print(f"\n{workdir / 'scale.json'}, {workdir / 'scale.png'}")
    return report


if __name__ == "__main__":
    main()
