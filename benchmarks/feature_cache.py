"""The feature cache on disk and in memory: the old whole-split npz against per-field memmapped .npy files.

For each layout, dtype and size, one process writes a synthetic SMART-baseline cache (vision [N, 2048],
BERT token states [N, 110, 768], labels) and a fresh process loads it and reads one shuffled epoch in
batches of 128, as the trainer does. Reported: bytes on disk, load seconds, epoch samples/s, the reading
process's peak RSS (``ru_maxrss``, which counts memmapped pages it holds) and its anonymous RSS at the end.

- ``npz``: the former cache, ``np.savez`` of the whole split and ``dict(np.load(...))`` (the split in
  memory). (The former extraction also kept its npz shards: twice this on disk.)
- ``mmap``: ``features.RowWriter`` (what ``features.extract_split`` writes through, shard by shard) and
  ``features.load_split`` (read-only memmaps).

Both read their batches through ``train.GatherCached``, as the trainer: float16 becomes float32, and a
memmap's pages leave the resident set every 32 MiB read.

    python -m benchmarks.feature_cache --dir /tmp/fc --sizes 1000,4000      # both layouts, both dtypes
    python -m benchmarks.feature_cache --dir /tmp/fc --sizes 101000 --layouts mmap --dtypes float32
    python -m benchmarks.feature_cache --dir /tmp/fc --sizes 101000 --layouts mmap --train-steps 20

``--train-steps K`` then runs K training steps of the SMART baseline head (its BiGRU over the token states)
on shuffled batches of the cache, as the trainer does, and reports the step time and peak RSS.

``--cold`` drops the cache files from the page cache (``posix_fadvise`` DONTNEED on those files only)
before reading, so the epoch reads the disk. The cache directory is removed after each measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

from benchmarks import timing
from smartvlm_jax import cli

VISION, QLEN, TEXT = 2048, 110, 768
BATCH = 128
CHUNK = 2048  # rows per written shard (the trainer: feature_shard_batches 16 x eval batch 128)


def chunk_rows(start: int, stop: int, dtype: str) -> dict[str, np.ndarray]:
    """Rows whose values name their row (cheap to make, checkable after reading)."""
    ids = np.arange(start, stop)
    value = (ids % 1000).astype(np.float32) / 8  # exact in float16
    return {
        "vision": np.broadcast_to(value[:, None], (len(ids), VISION)).astype(dtype),
        "text": np.broadcast_to(value[:, None, None], (len(ids), QLEN, TEXT)).astype(dtype),
        "labels": ids.astype(np.int32)[:, None],
        "puzzle_ids": (ids % 101 + 1).astype(np.int32),
    }


def write(layout: str, n: int, dtype: str, out: pathlib.Path) -> None:
    from smartvlm_jax import features

    out.mkdir(parents=True)
    if layout == "npz":
        parts = [chunk_rows(s, min(s + CHUNK, n), dtype) for s in range(0, n, CHUNK)]
        np.savez(out / "features.npz", **{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
        return
    writer = features.RowWriter(out, n, np.dtype(dtype))
    for shard, s in enumerate(range(0, n, CHUNK)):
        positions = np.arange(s, min(s + CHUNK, n))
        writer.write(positions, chunk_rows(s, positions[-1] + 1, dtype))
        writer.mark(shard, [positions])
    writer.finalize()


def drop_page_cache(out: pathlib.Path) -> None:
    for path in out.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def rss_anon_kib() -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return -1


def read(layout: str, out: pathlib.Path, train_steps: int = 0) -> dict:
    from smartvlm_jax import features, train

    start = time.perf_counter()
    cache = dict(np.load(out / "features.npz")) if layout == "npz" else features.load_split(out)
    load_s = time.perf_counter() - start
    gather = train.GatherCached(cache)  # as the trainer: float16 -> float32; memmap pages released
    n = len(cache["labels"])
    order = np.random.default_rng(0).permutation(n)
    start = time.perf_counter()
    for s in range(0, n, BATCH):
        rows = order[s : s + BATCH]
        batch = gather((rows, np.ones(len(rows), bool)))
        if not np.array_equal(batch["text"][:, -1, -1], (rows % 1000).astype(np.float32) / 8):
            raise AssertionError(f"the batch at {s} holds other rows")
    epoch_s = time.perf_counter() - start
    out = {
        "load_s": load_s,
        "epoch_s": epoch_s,
        "samples_per_s": n / epoch_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "end_rss_anon_mib": rss_anon_kib() / 1024,
    }
    if train_steps:
        out.update(train_baseline(gather, order, train_steps))
    return out


def train_baseline(gather, order: np.ndarray, steps: int) -> dict:
    """``steps`` jitted training steps of the SMART baseline head (configs/baseline.py: BiGRU over the 110
    token states, plain Adam) on batches of the cache's rows in the shuffled order, as the trainer feeds
    them; labels are made from the row ids (the cache's synthetic values carry no answer)."""
    import functools

    import jax

    from configs import baseline as baseline_config
    from smartvlm_jax import optim, reasoner, train

    config = baseline_config.get_config()
    cfg = config.model
    cfg.puzzle_ids, cfg.num_classes = list(range(1, 102)), [20] * 101
    cfg.vision_dim, cfg.text_dim = VISION, TEXT
    model, tx = reasoner.build(cfg), optim.make_optimizer(config.optim, steps)
    inputs = reasoner.checkpoint.example_inputs(cfg, batch=1)
    params = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, *inputs)["params"]
    rng = jax.random.key_data(jax.random.key(2))
    state = train.TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32), params=params, opt_state=tx.init(params), rng=rng
    )
    schedule = optim.learning_rate_schedule(config.optim, steps)
    step = jax.jit(
        functools.partial(train.train_step, model=model, model_cfg=cfg, tx=tx, schedule=schedule),
        donate_argnums=(0,),
    )
    batches = iter(range(steps + 1))

    def train_step() -> None:  # the batch's read and the step; the loss read back waits for the step
        nonlocal state
        i = next(batches)
        rows = order[i * BATCH : (i + 1) * BATCH]
        batch = gather((rows, np.ones(len(rows), bool)))
        labels = np.zeros((len(rows), 10), np.int32)
        labels[:, 0] = rows % 20
        batch = {k: batch[k] for k in ("vision", "text", "puzzle_ids", "mask")} | {"labels": labels}
        state, metrics = step(state, batch, None)
        loss = float(metrics.loss.compute())
        if not np.isfinite(loss):
            raise FloatingPointError(f"loss {loss} at step {i}")

    took = timing.time_call(train_step, repeats=steps, warmup=1)  # the first step compiles
    return {
        "train_steps": steps,
        "train_step_s": took.median,
        "train_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_end_rss_anon_mib": rss_anon_kib() / 1024,
    }


def measure(layout: str, n: int, dtype: str, root: pathlib.Path, cold: bool, train_steps: int = 0) -> dict:
    out = root / f"{layout}_{dtype}_{n}"
    shutil.rmtree(out, ignore_errors=True)
    me = [sys.executable, "-m", "benchmarks.feature_cache", "--dir", str(out), "--layouts", layout]
    start = time.perf_counter()
    subprocess.run([*me, "--write", str(n), "--dtypes", dtype], check=True)
    write_s = time.perf_counter() - start
    disk = sum(p.stat().st_size for p in out.iterdir())
    if cold:
        drop_page_cache(out)
    done = subprocess.run(
        [*me, "--read", "--train-steps", str(train_steps)], check=True, capture_output=True, text=True
    )
    shutil.rmtree(out)
    return {
        "layout": layout,
        "dtype": dtype,
        "n": n,
        "disk_gib": disk / 2**30,
        "write_s": write_s,
        **json.loads(done.stdout.strip().splitlines()[-1]),
    }


def main(argv=None) -> None:
    cli.keep_jax_off_absent_accelerators()  # an installed libtpu or CUDA plugin stays quiet here
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", required=True, help="where the caches are written (and removed)")
    parser.add_argument("--sizes", default="1000,4000", help="instances per cache, comma-separated")
    parser.add_argument("--layouts", default="npz,mmap")
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--cold", action="store_true", help="read from disk, not the page cache")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=0,
        help="after the epoch, time this many SMART-baseline training steps on the cache",
    )
    parser.add_argument("--write", type=int, default=0, help=argparse.SUPPRESS)  # child: write one cache
    parser.add_argument("--read", action="store_true", help=argparse.SUPPRESS)  # child: read one cache
    args = parser.parse_args(argv)
    root = pathlib.Path(args.dir)
    if args.write:
        write(args.layouts, args.write, args.dtypes, root)
        return
    if args.read:
        print(json.dumps(read(args.layouts, root, args.train_steps)))
        return
    print(
        "| layout | dtype | N | disk GiB | write s | load s | epoch s | samples/s | peak RSS MiB | anon MiB |"
    )
    print("|---|---|" + "---:|" * 8)
    for n in (int(s) for s in args.sizes.split(",")):
        for dtype in args.dtypes.split(","):
            for layout in args.layouts.split(","):
                r = measure(layout, n, dtype, root, args.cold, args.train_steps)
                cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()]
                print("| " + " | ".join(cells[:10]) + " |", flush=True)
                if args.train_steps:
                    print(
                        f"  baseline head: {r['train_steps']} steps of batch {BATCH}, median "
                        f"{r['train_step_s']:.2f} s a step (batch read included), peak RSS "
                        f"{r['train_peak_rss_mib']:.0f} MiB, anonymous "
                        f"{r['train_end_rss_anon_mib']:.0f} MiB",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
