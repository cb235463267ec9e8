"""The paper's table as one sweep, against one run: what training every row and seed at once costs.

``--part smoke``: wall time of one smoke run (``smartvlm_jax.main --config configs/smoke.py``) against
the smoke sweep (``smartvlm_jax.sweep --config configs/paper.py:smoke``: 5 rows x 3 seeds), each in a fresh
process with a fresh workdir and an empty feature store; "cold" with an empty XLA compilation cache,
"warm" with the cache an earlier run of the same command filled. Fifteen separate runs would take about
15x one run; the target is at most 2.5x.

``--part medium``: the sweep (configs/paper.py: SMARTER and its four ablations x 3 seeds) on 11 synthetic
puzzles x ``--per-puzzle`` instances with random-init towers of the released base configs (dinov2-base,
siglip-base-patch16-224, written by transformers), ``--epochs`` epochs. Prints the feature extraction's
seconds against the sweep's, which tower columns were extracted (each once), and the tower passes the
reference's design would make for the same table (every run recomputes the towers for every training
instance of every epoch and every evaluation) at the per-instance cost measured here.

    python -m benchmarks.sweep --workdir /tmp/bsweep --part smoke [--json out.json]
    python -m benchmarks.sweep --workdir /tmp/bsweep --part medium [--per-puzzle 40] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def timed(cmd: list[str], log: pathlib.Path, env: dict[str, str] | None = None) -> float:
    """Wall seconds of ``cmd`` in its own process (output to ``log``); CalledProcessError names the log."""
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode:
        raise subprocess.CalledProcessError(done.returncode, cmd, f"see {log}")
    return time.perf_counter() - start


def smoke(work: pathlib.Path) -> dict:
    """Cold and warm wall seconds of one smoke run and of the smoke sweep."""
    jobs = {
        "one smoke run": ["-m", "smartvlm_jax.main", "--config", "configs/smoke.py"],
        "smoke sweep (5 rows x 3 seeds)": ["-m", "smartvlm_jax.sweep", "--config", "configs/paper.py:smoke"],
    }
    out: dict = {}
    for i, (name, args) in enumerate(jobs.items()):
        compile_cache = work / f"xla_{i}"
        shutil.rmtree(compile_cache, ignore_errors=True)
        out[name] = {}
        for mode in ("cold", "warm"):  # warm: the compilation cache the cold run filled
            run_dir, store = work / f"run_{i}_{mode}", work / f"store_{i}_{mode}"
            for path in (run_dir, store):
                shutil.rmtree(path, ignore_errors=True)
            cmd = [sys.executable, *args, "--workdir", str(run_dir), f"--config.feature_store={store}"]
            cmd.append(f"--config.compile_cache_dir={compile_cache}")
            out[name][mode] = timed(cmd, work / f"run_{i}_{mode}.log")
            print(f"{name}, {mode}: {out[name][mode]:.1f} s", flush=True)
    single, swept = (out[n] for n in jobs)
    out["ratio"] = {mode: swept[mode] / single[mode] for mode in ("cold", "warm")}
    print()
    print("| job | cold (s) | warm (s) |")
    print("|---|---:|---:|")
    for name in jobs:
        print(f"| {name} | {out[name]['cold']:.1f} | {out[name]['warm']:.1f} |")
    print(f"| sweep / one run | {out['ratio']['cold']:.2f}x | {out['ratio']['warm']:.2f}x |")
    return out


def medium(work: pathlib.Path, per_puzzle: int, epochs: int) -> dict:
    """The sweep on base-size random towers; extraction against the whole, and the reference's passes."""
    sys.path.insert(0, str(REPO))
    from benchmarks import throughput
    from smartvlm_jax import reports
    from smartvlm_jax.data import smart101, synthetic

    data = work / f"data_{per_puzzle}"
    if not data.exists():
        synthetic.write_dataset(str(data), per_puzzle=per_puzzle, seed=0)
    towers = work / "towers"
    if not towers.exists():
        rows = smart101.read_rows(data, smart101.found_puzzle_ids(data))
        start = time.perf_counter()
        throughput.write_towers(towers, "base", [r.question for r in rows])
        print(f"base towers written in {time.perf_counter() - start:.1f} s", flush=True)
    run_dir, store = work / "sweep", work / "store"
    for path in (run_dir, store):
        shutil.rmtree(path, ignore_errors=True)
    cmd = [sys.executable, "-m", "smartvlm_jax.sweep", "--config", "configs/paper.py"]
    cmd += ["--workdir", str(run_dir), f"--config.data.root={data}", f"--config.data.data_tot={per_puzzle}"]
    cmd += [
        f"--config.num_epochs={epochs}",
        *(f"--config.towers.{n}={towers / n}" for n in ("dinov2", "siglip")),
    ]
    cmd += [f"--config.feature_store={store}", f"--config.compile_cache_dir={work / 'xla'}"]
    wall = timed(cmd, work / "sweep.log")
    record = json.loads((run_dir / "sweep.json").read_text())
    first = reports.load_results(run_dir / "smarter" / record["members"][0])
    sizes = {s: first[s]["n"] for s in ("test",)}
    config = json.loads((run_dir / "smarter" / record["members"][0] / "config.json").read_text())
    rows = smart101.read_rows(data, [int(p) for p in str(config["data"]["puzzle_ids"]).split(",")])
    splits = {
        s: len(smart101.split_rows(rows, s, _data_cfg(config), smart101.num_classes(rows)))
        for s in ("train", "val", "test")
    }
    instances = sum(splits.values())
    per_instance = record["extraction_s"] / instances
    runs = len(record["rows"]) * len(record["members"])
    reference_passes = runs * (epochs * (splits["train"] + splits["val"]) + splits["test"])
    out = {
        "wall_s": wall,
        "total_s": record["total_s"],
        "extraction_s": record["extraction_s"],
        "rows": record["rows"],
        "splits": splits,
        "test_n": sizes["test"],
        "tower_instances_ours": instances,
        "tower_instances_reference_design": reference_passes,
        "extraction_s_per_instance": per_instance,
        "reference_design_tower_s_estimate": reference_passes * per_instance,
    }
    print(
        f"sweep: {len(record['rows'])} rows x {len(record['members'])} members, {epochs} epochs, "
        f"{instances} instances ({splits})"
    )
    print(
        f"wall {wall:.1f} s; the sweep's own total {record['total_s']:.1f} s; feature extraction "
        f"{record['extraction_s']:.1f} s ({100 * record['extraction_s'] / record['total_s']:.0f} %)"
    )
    for row, values in record["rows"].items():
        print(f"  {row}: extraction {values['extraction_s']:.1f} s, row {values.get('seconds', 0):.1f} s")
    print(
        f"towers ran over {instances} instances once; the reference's design: {reference_passes} "
        f"instance passes, ~{reference_passes * per_instance:.0f} s at this machine's "
        f"{per_instance:.3f} s per instance"
    )
    return out


def _data_cfg(config: dict):
    import ml_collections

    return ml_collections.ConfigDict(config["data"])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--part", choices=["smoke", "medium"], required=True)
    parser.add_argument("--per-puzzle", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    work = pathlib.Path(args.workdir).absolute()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONPATH", str(REPO))
    result = smoke(work) if args.part == "smoke" else medium(work, args.per_puzzle, args.epochs)
    result["load_average"] = os.getloadavg()
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
