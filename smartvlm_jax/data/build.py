"""Build the `smart101` TFDS dataset (ArrayRecord, no TensorFlow) from a SMART-101-layout folder.

    python -m smartvlm_jax.data.build --data-root /path/SMART101-Data --data-dir /path/tfds [--puzzles 1 2 3]

The `tfds` command line needs apache_beam, so the build runs from Python. A dataset already built in
`data_dir` from the same folder and puzzles is reused while the folder's rows and images are unchanged
(`smart101.rows_fingerprint`, recorded in the dataset's metadata) and the built files are those the build
wrote (their digest, `smartvlm_build.json` beside them); it is rebuilt when either changed. One of another
folder or other puzzles is an error unless `--overwrite`. TFDS writes a build under a temporary name
(`incomplete.*`) and renames it into place, so an interrupted build leaves nothing that is reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence

import tensorflow_datasets as tfds

from smartvlm_jax import cli, console, hashing, workdir
from smartvlm_jax.data import smart101
from smartvlm_jax.data.tfds_smart101 import SPLIT, Smart101, dataset_path

log = logging.getLogger("smartvlm_jax.data.build")  # (__name__ is "__main__" under python -m)

# Beside the built files: the digest of the files as this build wrote them.
BUILD_RECORD = "smartvlm_build.json"


def build(
    data_root: str | os.PathLike,
    data_dir: str | os.PathLike,
    puzzle_ids: str | Sequence[int] = "all",
    *,
    skip_bad_rows: bool = False,
    overwrite: bool = False,
    replace_how: str = "use another --data-dir, or replace it with --overwrite",
) -> tfds.core.DatasetBuilder:
    """Write the rows of `puzzle_ids` under `data_root` as the TFDS dataset `smart101` in `data_dir`.

    Returns the read-only builder of the written dataset (its `.data_dir` is `dataset_path(data_dir)`).
    A dataset of the same puzzles built before is reused if the folder's rows and images have the
    fingerprint it was built from (`smart101.rows_fingerprint`, which a moved folder keeps), else rebuilt
    when it was built from the same folder and refused (FileExistsError) when from another: one line naming
    what differs and, in the caller's words (`replace_how`: its flags), the fix. Bad images raise
    smart101.BadImageError (file and CSV row named) unless `skip_bad_rows`.
    """
    ids = smart101.resolve_puzzle_ids(data_root, puzzle_ids)
    if not ids:
        raise FileNotFoundError(f"no puzzle folders under {data_root}")
    path = dataset_path(data_dir)
    if os.path.exists(os.path.join(path, "dataset_info.json")):
        existing = tfds.builder_from_directory(path).info.metadata
        fingerprint = smart101.rows_fingerprint(smart101.read_rows(data_root, ids))
        same_ids = existing.get("puzzle_ids") == ids
        same_rows = same_ids and existing.get("fingerprint") == fingerprint  # wherever the folder is now
        if overwrite:
            shutil.rmtree(path)
        elif not same_rows and not (same_ids and existing.get("source") == os.path.abspath(data_root)):
            held = existing.get("puzzle_ids")
            what = f"puzzles {held}, not {ids}," if not same_ids else f"other rows of puzzles {ids}:"
            raise FileExistsError(
                f"{path} holds {what} built from {existing.get('source')}, not {os.path.abspath(data_root)}; "
                f"{replace_how}"
            )
        elif not same_rows:
            log.info("rebuilding %s: the rows or images of %s changed since it was built", path, data_root)
            shutil.rmtree(path)
        elif recorded_digest(path) != files_digest(path):
            log.info(
                "rebuilding %s: its files changed since it was built (or its build was not finished)", path
            )
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
    record = {"files_digest": files_digest(path)}
    tmp = os.path.join(path, f"{BUILD_RECORD}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f)
    os.replace(tmp, os.path.join(path, BUILD_RECORD))
    skipped = builder.info.metadata["skipped"]
    if skipped:
        log.warning("built %s without %d bad rows", path, len(skipped))
    return tfds.builder_from_directory(path)


def files_digest(path: str | os.PathLike) -> str:
    """SHA-256 over the built dataset's files (names and contents; the build record left out). Large
    files' digests are remembered per file identity in the per-user cache (``hashing.file_digest``)."""
    return hashing.directory_digest(
        path, workdir.user_cache_dir("digests"), skip=lambda name: name.name.startswith(BUILD_RECORD)
    )


def recorded_digest(path: str | os.PathLike) -> str | None:
    """The files' digest the build recorded, or None (no record: an older build, or a damaged one)."""
    try:
        with open(os.path.join(path, BUILD_RECORD), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record.get("files_digest") if isinstance(record, dict) else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(
        prog=cli.prog("smartvlm_jax.data.build"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data-root", required=True, help="SMART-101 layout folder (release or synthetic)")
    parser.add_argument("--data-dir", required=True, help="TFDS data dir to write into")
    parser.add_argument(
        "--puzzles", nargs="+", default=None, help="all (the default: every folder found) or ids: 1,2,3"
    )
    parser.add_argument("--skip-bad-rows", action="store_true", help="skip rows with bad images (logged)")
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset in --data-dir")
    parser.add_argument("--traceback", action="store_true", help=cli.TRACEBACK_HELP)
    args = parser.parse_args(argv)
    # The console's rule: the project's lines and warnings, not the libraries' INFO lines (absl's).
    console.configure(None, 0).set_process(0)

    def run() -> None:
        puzzles = cli.puzzle_ids_flag(args.puzzles, "--puzzles")
        builder = build(
            args.data_root,
            args.data_dir,
            puzzles,
            skip_bad_rows=args.skip_bad_rows,
            overwrite=args.overwrite,
        )
        meta = builder.info.metadata
        count = builder.info.splits[SPLIT].num_examples
        for line in meta["skipped"]:  # each bad row named once
            print(f"skipped {line}")
        skipped = len(meta["skipped"])
        print(f"{builder.data_dir}: {count} rows of puzzles {meta['puzzle_ids']}, {skipped} skipped")

    return cli.run(run, traceback=args.traceback)


if __name__ == "__main__":
    sys.exit(main())
