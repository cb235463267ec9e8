"""Build the `smart101` TFDS dataset (ArrayRecord, no TensorFlow) from a SMART-101-layout folder.

    python -m smartvlm_jax.data.build --data-root /path/SMART101-Data --data-dir /path/tfds [--puzzles 1 2 3]

The `tfds` command line needs apache_beam, so the build runs from Python. A dataset already built in
`data_dir` from the same folder and puzzles is reused while the folder's rows and images are unchanged
(`smart101.rows_fingerprint`, recorded in the dataset's metadata) and rebuilt when they changed; one of
another folder or other puzzles is an error unless `--overwrite`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Sequence

import tensorflow_datasets as tfds

from smartvlm_jax import cli
from smartvlm_jax.data import smart101
from smartvlm_jax.data.tfds_smart101 import SPLIT, Smart101, dataset_path

log = logging.getLogger(__name__)


def build(
    data_root: str | os.PathLike,
    data_dir: str | os.PathLike,
    puzzle_ids: str | Sequence[int] = "all",
    *,
    skip_bad_rows: bool = False,
    overwrite: bool = False,
) -> tfds.core.DatasetBuilder:
    """Write the rows of `puzzle_ids` under `data_root` as the TFDS dataset `smart101` in `data_dir`.

    Returns the read-only builder of the written dataset (its `.data_dir` is `dataset_path(data_dir)`).
    A dataset of the same folder and puzzles built before is reused if the folder's rows and images have
    the fingerprint it was built from (`smart101.rows_fingerprint`), else rebuilt. Bad images raise
    smart101.BadImageError (file and CSV row named) unless `skip_bad_rows`.
    """
    ids = smart101.resolve_puzzle_ids(data_root, puzzle_ids)
    if not ids:
        raise FileNotFoundError(f"no puzzle folders under {data_root}")
    path = dataset_path(data_dir)
    if os.path.exists(os.path.join(path, "dataset_info.json")):
        existing = tfds.builder_from_directory(path).info.metadata
        same = existing.get("source") == os.path.abspath(data_root) and existing.get("puzzle_ids") == ids
        if overwrite or not same:
            if not overwrite:
                raise FileExistsError(
                    f"{path} holds puzzles {existing.get('puzzle_ids')} of {existing.get('source')}, not "
                    f"{ids} of {os.path.abspath(data_root)}; use another data dir or replace it (--overwrite)"
                )
            shutil.rmtree(path)
        elif existing.get("fingerprint") != smart101.rows_fingerprint(smart101.read_rows(data_root, ids)):
            log.info("rebuilding %s: the rows or images of %s changed since it was built", path, data_root)
            shutil.rmtree(path)
        else:
            log.info("reusing %s", path)
            return tfds.builder_from_directory(path)
    builder = Smart101(
        data_dir=os.fspath(data_dir), file_format="array_record", puzzle_ids=ids, skip_bad_rows=skip_bad_rows
    )
    # TFDS's bars ("Generating splits...", "Shuffling ...") nest and leave cursor moves in a log file; the
    # builder shows its own progress (console.Progress) instead.
    tfds.display_progress_bar(False)
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(data_root))
        )
    finally:
        tfds.display_progress_bar(True)
    skipped = builder.info.metadata["skipped"]
    if skipped:
        log.warning("built %s without %d bad rows", path, len(skipped))
    return tfds.builder_from_directory(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", required=True, help="SMART-101 layout folder (release or synthetic)")
    parser.add_argument("--data-dir", required=True, help="TFDS data dir to write into")
    parser.add_argument(
        "--puzzles", type=int, nargs="*", default=None, help="puzzle ids (default: all found)"
    )
    parser.add_argument("--skip-bad-rows", action="store_true", help="skip rows with bad images (logged)")
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset in --data-dir")
    parser.add_argument("--traceback", action="store_true", help=cli.TRACEBACK_HELP)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    def run() -> None:
        builder = build(
            args.data_root,
            args.data_dir,
            args.puzzles if args.puzzles else "all",
            skip_bad_rows=args.skip_bad_rows,
            overwrite=args.overwrite,
        )
        meta = builder.info.metadata
        count = builder.info.splits[SPLIT].num_examples
        skipped = len(meta["skipped"])
        print(f"{builder.data_dir}: {count} rows of puzzles {meta['puzzle_ids']}, {skipped} skipped")

    return cli.run(run, traceback=args.traceback)


if __name__ == "__main__":
    sys.exit(main())
