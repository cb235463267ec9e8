"""Input-pipeline throughput: smartvlm_jax's grain pipeline vs the reference's loader design, same files.

    python -m benchmarks.pipeline [--per-puzzle 100] [--batch 32] [--epochs 2]

Writes synthetic puzzles, builds the TFDS dataset, then times examples/s of:
  * reference design: a PyTorch Dataset whose item is PIL open + convert RGB + Resize(224) (shorter side,
    bilinear) + to-tensor, through torch's DataLoader (shuffle, batch), 0 and 2 workers (torchvision is
    not installed: its Resize/ToTensor are written out with PIL and torch ops that compute the same thing);
  * ours: grain over the ArrayRecord dataset, decode + the same 224 resize + `--towers` resizers
    (stand-ins for the towers' resizers: 224x224 bicubic, and shorter side 256 bicubic + centre crop 224)
    + tokenizer, per-process sharding and batching; read threads and worker processes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from absl import flags
from PIL import Image

from smartvlm_jax import cli
from smartvlm_jax.data import build, pipeline, smart101, synthetic
from tests.support.data import HashTokenizer


class SquareBicubic:
    """SigLIP-like resizer stand-in: 224x224 bicubic."""

    def __call__(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.resize((224, 224), Image.BICUBIC), np.uint8)


class ShortSideCrop:
    """DINOv2-like resizer stand-in: shorter side 256 bicubic, centre crop 224."""

    def __call__(self, image: Image.Image) -> np.ndarray:
        w, h = image.size
        s = 256 / min(w, h)
        im = image.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BICUBIC)
        left, top = (im.width - 224) // 2, (im.height - 224) // 2
        return np.asarray(im.crop((left, top, left + 224, top + 224)), np.uint8)


class ReferenceDataset(torch.utils.data.Dataset):
    """The reference's item: image tensor at shorter side 224 (to-tensor, float in [0, 1]) and label."""

    def __init__(self, rows: list[smart101.Row]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows[i]
        im = smart101.load_image(row.image_path)  # PIL open + RGB + Resize(224), as torchvision on PIL
        x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div(255)  # ToTensor
        # Variable widths (shorter side 224) cannot be stacked; the reference's images were pre-resized,
        # so its collate stacks 224-wide crops: take the top-left 224x224 as its stand-in.
        return x[:, :224, :224], torch.tensor(row.answer_index)


def time_reference(rows, batch: int, epochs: int, workers: int) -> float:
    loader = torch.utils.data.DataLoader(
        ReferenceDataset(rows), batch_size=batch, shuffle=True, num_workers=workers, drop_last=True
    )
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for x, _ in loader:
            count += x.shape[0]
    return count / (time.perf_counter() - start)


def time_ours(data_dir, cfg, batch: int, epochs: int, workers: int, threads: int, towers: bool) -> float:
    pre = {"siglip": SquareBicubic(), "dinov2": ShortSideCrop()} if towers else {"raw": SquareBicubic()}
    ds = pipeline.make_pipeline(
        data_dir,
        "train",
        cfg,
        global_batch_size=batch,
        preprocessors=pre,
        tokenizer=HashTokenizer(),
        seed=0,
        shuffle=True,
        num_epochs=epochs,
        drop_remainder=True,
        process_index=0,
        process_count=1,
        worker_count=workers,
        read_threads=threads,
    )
    count, start = 0, time.perf_counter()
    for b in ds:
        count += b["labels"].shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    cli.keep_jax_off_absent_accelerators()  # an installed libtpu or CUDA plugin stays quiet here
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-puzzle", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "smartvlm_bench_pipeline"))
    args = parser.parse_args()
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags (their defaults suffice)
    root, data_dir = os.path.join(args.workdir, "raw"), os.path.join(args.workdir, "tfds")
    synthetic.write_dataset(root, args.per_puzzle, seed=0)
    build.build(root, data_dir, overwrite=True)
    cfg = smart101.default_data_config()
    rows = smart101.split_rows(smart101.read_rows(root), "train", cfg)
    print(f"{len(rows)} train rows, batch {args.batch}, {args.epochs} epochs, {os.cpu_count()} CPUs")
    for workers in (0, 2):
        print(
            f"reference design (torch DataLoader, {workers} workers): "
            f"{time_reference(rows, args.batch, args.epochs, workers):7.1f} examples/s"
        )
    for towers in (False, True):
        for workers, threads in ((0, 1), (0, 4), (2, 1)):
            what = "2 tower resizes + tokens" if towers else "1 resize + tokens"
            rate = time_ours(data_dir, cfg, args.batch, args.epochs, workers, threads, towers)
            print(f"ours ({what}, {workers} workers, {threads} threads): {rate:7.1f} examples/s")


if __name__ == "__main__":
    main()
