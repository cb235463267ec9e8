"""The feature store: columns shared between runs, keyed by what determines them.

``<store>/<split>-<key16>/`` (a :class:`SplitPlan`'s entry) holds a split's label fields once and any
number of columns (``<column name>.npy`` beside its ``.json``), each immutable once renamed into place.
:func:`fill_split` extracts the missing ones under the entry's lock; a run's ``features.json``
(:func:`write_record`) names what it read, and :func:`read_recorded` reads it back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import pathlib
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from smartvlm_jax import fileio, hashing
from smartvlm_jax.features.columns import FORMAT_VERSION, Column
from smartvlm_jax.features.extract import LABEL_FIELDS
from smartvlm_jax.features.memmap import load_memmap

log = logging.getLogger(__name__)

LABELS_DONE = "labels.json"  # an entry's label fields are complete (written after them)
LOCK_FILE = "lock"
RECORD_FILE = "features.json"  # in the workdir: the store entries and columns a run read


@dataclasses.dataclass(frozen=True)
class SplitPlan:
    """The store entry of one split's rows and the columns a variant reads from it.

    ``<store>/<split>-<key16>/``: the key covers the split's rows in order (``smart101.rows_fingerprint``:
    CSV fields and each image's size and mtime) and ``FORMAT_VERSION``. It holds the label fields once
    (``labels.npy``, ``puzzle_ids.npy``, ...; ``labels.json`` once they are complete) and any number of
    columns, each immutable once renamed into place.
    """

    entry: pathlib.Path
    num_rows: int
    vision: tuple[Column, ...]
    text: Column

    @property
    def columns(self) -> tuple[Column, ...]:
        return (*self.vision, self.text)

    def column_path(self, column: Column) -> pathlib.Path:
        return self.entry / f"{column.name}.npy"

    def missing(self) -> list[Column]:
        """The columns this entry does not hold yet (all of them while its labels are incomplete)."""
        if not (self.entry / LABELS_DONE).exists():
            return list(self.columns)
        return [c for c in self.columns if not self.column_path(c).exists()]

    def load(self) -> dict[str, np.ndarray | tuple[np.ndarray, ...]]:
        """The split's cache in row order: "vision" a tuple of read-only memmaps (one per vision tower, the
        variant's order), "text" and each label field one memmap; nothing read yet."""
        cache: dict = {f: load_memmap(self.entry / f"{f}.npy") for f in LABEL_FIELDS}
        cache["vision"] = tuple(load_memmap(self.column_path(c)) for c in self.vision)
        cache["text"] = load_memmap(self.column_path(self.text))
        return cache


def plan_split(
    store: str | os.PathLike,
    split: str,
    rows_fingerprint: str,
    num_rows: int,
    columns: tuple[tuple[Column, ...], Column],
) -> SplitPlan:
    """The :class:`SplitPlan` of a split's rows (their ``smart101.rows_fingerprint``) in ``store``."""
    key = hashing.digest_json({"format": FORMAT_VERSION, "split": split, "rows": rows_fingerprint})
    entry = pathlib.Path(store).absolute() / f"{split}-{key[:16]}"
    return SplitPlan(entry, num_rows, *columns)


@contextlib.contextmanager
def locked(entry: pathlib.Path, enabled: bool) -> Iterator[None]:
    """An exclusive ``flock`` on ``<entry>/lock`` (process 0 of a job; others wait at the barriers): a
    second job extracting into the same entry waits, then finds what the first wrote."""
    if not enabled:
        yield
        return
    entry.mkdir(parents=True, exist_ok=True)
    with open(entry / LOCK_FILE, "a") as lock:
        if not _try_lock(lock):
            log.info("features %s: waiting for another run extracting into it", entry)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _try_lock(lock) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def missing_everywhere(plan: SplitPlan) -> list[Column]:
    """The columns of ``plan`` missing from its store entry, as process 0 sees it, on every process (they
    extract together)."""
    missing = plan.missing()
    if jax.process_count() == 1:
        return missing
    mask = np.asarray([c in missing for c in plan.columns], np.int32)
    mask = np.asarray(multihost_utils.broadcast_one_to_all(mask))
    return [c for c, m in zip(plan.columns, mask, strict=True) if m]


def fill_split(plan: SplitPlan, extract: Callable[[list[Column], pathlib.Path], object]) -> list[Column]:
    """Make ``plan.entry`` hold every column of the plan and the label fields; returns those extracted.

    Under the entry's lock, ``extract(missing, work_dir)`` is called with the columns still missing; it
    must leave a finished :func:`extract_split` cache (their fields and the label fields) in
    ``work_dir`` = ``<entry>/extracting-<key16 of the missing set>/``, where a killed extraction resumes.
    Then (process 0) each column's ``.json`` and ``.npy`` and, when the entry lacks them, the label fields
    are renamed into the entry, ``labels.json`` written, and the work dir removed.
    """
    lead = jax.process_index() == 0
    if not plan.missing() and jax.process_count() == 1:
        return []
    with locked(plan.entry, enabled=lead):
        missing = missing_everywhere(plan)
        if not missing:
            return []
        names = sorted(c.name for c in missing)
        work = plan.entry / f"extracting-{hashing.digest_json(names)[:16]}"
        extract(missing, work)
        # Every process has read the work dir (extract_split ends by loading it) before process 0 moves
        # its files into the entry and removes it.
        multihost_utils.sync_global_devices(f"features extracted {plan.entry}")
        if lead:
            _move_into_entry(plan, missing, work)
        multihost_utils.sync_global_devices(f"features stored {plan.entry}")
    return missing


def _move_into_entry(plan: SplitPlan, columns: Sequence[Column], work: pathlib.Path) -> None:
    """Rename into the entry from ``work`` the label fields (when the entry lacks them; ``labels.json``
    after them) and each column (its ``.json``, then its ``.npy``, whose presence marks it stored); then
    remove ``work``."""
    if not (plan.entry / LABELS_DONE).exists():
        for field in LABEL_FIELDS:
            os.replace(work / f"{field}.npy", plan.entry / f"{field}.npy")
        fileio.write_json(plan.entry / LABELS_DONE, {"rows": plan.num_rows, "fields": LABEL_FIELDS}, indent=1)
    for column in columns:
        fileio.write_json(plan.entry / f"{column.name}.json", dict(column.inputs), indent=1)
        os.replace(work / f"{column.field}.npy", plan.column_path(column))
    shutil.rmtree(work)


def write_record(
    path: str | os.PathLike,
    store: pathlib.Path,
    plans: Mapping[str, SplitPlan],
    extracted: Mapping[str, Sequence[Column]],
) -> None:
    """``<workdir>/features.json``: the store, and per split its entry, the columns the run read (vision
    in order, text) and those this run extracted."""
    record = {
        "store": str(store),
        "format": FORMAT_VERSION,
        "splits": {
            split: {
                "entry": str(plan.entry),
                "rows": plan.num_rows,
                "vision": [c.name for c in plan.vision],
                "text": plan.text.name,
                "extracted": [c.name for c in extracted.get(split, ())],
            }
            for split, plan in plans.items()
        },
    }
    fileio.write_json(path, record, indent=1)


def read_recorded(workdir: str | os.PathLike, split: str) -> dict[str, np.ndarray]:
    """The features a run trained or evaluated on (its ``features.json``), as the head takes them:
    "vision" [N, sum D] (the columns concatenated, in memory), "text" and the label fields (memmaps).
    FileNotFoundError when the workdir or the store no longer holds them."""
    record_file = pathlib.Path(workdir) / RECORD_FILE
    if not record_file.is_file():
        raise FileNotFoundError(f"{record_file} does not exist: the run cached no features")
    info = json.loads(record_file.read_text())["splits"][split]
    entry = pathlib.Path(info["entry"])
    cache = {f: load_memmap(entry / f"{f}.npy") for f in LABEL_FIELDS}
    cache["vision"] = np.concatenate([load_memmap(entry / f"{n}.npy") for n in info["vision"]], axis=-1)
    cache["text"] = load_memmap(entry / f"{info['text']}.npy")
    return cache
