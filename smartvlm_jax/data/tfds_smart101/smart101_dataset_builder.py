"""TFDS builder over a manual directory holding the SMART-101 release layout (or synthetic.py's output).

One TFDS split, "full", holds every readable row of the requested puzzles in the reader's order (puzzle
id, then CSV row; `disable_shuffling=True` keeps it). Train/val/test are not TFDS splits because they
depend on the run's data config (split_type, data_tot, ratio, fs_k): the builder stores a small index in
the dataset's `metadata.json` (puzzle id, CSV row index and label[0] per record, CSV length and C_p per
puzzle) and the pipeline computes a split's record numbers from it with `smart101.split_indices`,
without decoding an image. Images are stored as the original file bytes (PNG, any mode): TFDS then
needs no TensorFlow, and decoding + the reference's RGB/224 resize happen in the pipeline.

Building shows two progress stages ("dataset: images checked", transient, and "dataset"); TFDS's own bars
are turned off by `build.build`, and its bold "Downloading and preparing dataset" lines (nothing is
downloaded) become log lines.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from smartvlm_jax import console, puzzles
from smartvlm_jax.data import smart101

log = logging.getLogger(__name__)

DATASET_NAME = "smart101"
SPLIT = "full"
VERSION = "1.0.0"


def dataset_path(data_dir: str | os.PathLike) -> str:
    """Folder of the built dataset inside a TFDS data dir: `<data_dir>/smart101/<version>`."""
    return os.path.join(data_dir, DATASET_NAME, VERSION)


class Smart101(tfds.core.GeneratorBasedBuilder):
    """SMART-101 puzzles: image bytes, question, options, answer letter, answer values, ids."""

    name = DATASET_NAME
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "Release or synthetic rows with the answer values of SPEC section 2."}
    # Nothing is downloaded, so no URL checksums: without this tfds looks for a checksums file next to
    # the code through `importlib_resources`, a backport that this environment does not install.
    url_infos = None
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download SMART101-Data from Zenodo record 7775984 (or write synthetic puzzles with "
        "`python -m smartvlm_jax.data.synthetic`) and pass its folder as the manual dir."
    )

    def __init__(self, *, puzzle_ids: str | Sequence[int] = "all", skip_bad_rows: bool = False, **kwargs):
        """`puzzle_ids` and `skip_bad_rows` matter only when building; reading needs neither."""
        self._puzzle_ids = puzzle_ids
        self._skip_bad_rows = skip_bad_rows
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        k = puzzles.NUM_DECODE_STEPS
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # original file bytes
                "image_name": tfds.features.Text(),
                "question": tfds.features.Text(),
                "options": tfds.features.Sequence(tfds.features.Text(), length=5),
                "answer_letter": tfds.features.Text(),
                "answer_index": tfds.features.Scalar(dtype=np.int32),
                "label": tfds.features.Tensor(shape=(k,), dtype=np.int32),
                "option_values": tfds.features.Tensor(shape=(5, k), dtype=np.int32),
                "puzzle_id": tfds.features.Scalar(dtype=np.int32),
                "instance_id": tfds.features.Scalar(dtype=np.int32),
                "row_index": tfds.features.Scalar(dtype=np.int32),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=features,
            disable_shuffling=True,  # records stay in the reader's order, which the metadata index mirrors
            metadata=tfds.core.MetadataDict(),
            homepage="https://doi.org/10.5281/zenodo.7775984",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = os.fspath(dl_manager.manual_dir)
        rows = smart101.read_rows(root, self._puzzle_ids)
        # C_p and CSV lengths come from whole CSVs, before bad rows are dropped.
        classes = smart101.num_classes(rows)
        num_rows: dict[int, int] = {}
        for row in rows:
            num_rows[row.puzzle_id] = num_rows.get(row.puzzle_id, 0) + 1
        with console.Progress("dataset: images checked", len(rows), "images", leave=False) as progress:
            # DEBUG: build() and its callers name the skipped rows (the metadata's "skipped") once
            good, skipped = smart101.drop_bad_images(
                rows, self._skip_bad_rows, progress.update, logging.DEBUG
            )
        self.info.metadata.update(
            {
                "source": os.path.abspath(root),
                "puzzle_ids": sorted(num_rows),
                # what the dataset was built from (CSV rows, image sizes and mtimes): build() rebuilds a
                # dataset whose folder changed since
                "fingerprint": smart101.rows_fingerprint(rows),
                "num_rows": {str(p): n for p, n in num_rows.items()},
                "num_classes": {str(p): c for p, c in classes.items()},
                "skipped": skipped,
                "index": {
                    "puzzle_id": [r.puzzle_id for r in good],
                    "row_index": [r.row_index for r in good],
                    "label0": [r.label[0] for r in good],
                },
            }
        )
        return {SPLIT: self._generate_examples(good)}

    def _log_download_bytes(self) -> None:
        """TFDS prints "Downloading and preparing dataset <sizes>" to stdout; a local build downloads
        nothing, so it is a log line."""
        log.debug("building %s in %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        log.debug("built %s in %s", self.name, self.data_dir)

    def _generate_examples(self, rows: Sequence[smart101.Row]):
        progress = console.Progress("dataset", len(rows), "rows")
        for number, row in enumerate(progress.iterate(rows)):
            with open(row.image_path, "rb") as f:
                image = f.read()
            yield (
                number,
                {
                    "image": image,
                    "image_name": os.path.basename(row.image_path),
                    "question": row.question,
                    "options": list(row.options),
                    "answer_letter": row.answer_letter,
                    "answer_index": row.answer_index,
                    "label": np.asarray(row.label, np.int32),
                    "option_values": np.asarray(row.option_values, np.int32),
                    "puzzle_id": row.puzzle_id,
                    "instance_id": row.instance_id,
                    "row_index": row.row_index,
                },
            )
