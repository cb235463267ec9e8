"""Per-instance test predictions of a run, computed from its workdir alone: the best model's head applied
to the stored tower features (no tower runs), kept in ``<workdir>/<split>_predictions.npz``.

The file (numpy ``.npz``, N instances of the split in its row order, K = ``puzzles.NUM_DECODE_STEPS``,
k = ``TOP_K``):

==================  ==================  ===========================================================
``puzzle_ids``      int64 [N]           puzzle id
``instance_ids``    int64 [N]           the instance's id in its puzzle's CSV
``preds``           int64 [N, K]        argmax answer value per decode position (as ``predict_step``)
``labels``          int64 [N, K]        the true answer values
``option_values``   int64 [N, 5, K]     each option's value, encoded like the labels
``answer_index``    int64 [N]           the correct option, 0..4
``option_index``    int64 [N]           the option the prediction chooses (``metrics.select_options``);
                                        -1 when none matches
``top_values``      int64 [N, K, k]     the k most probable values per position
``top_probs``       float32 [N, K, k]   their softmax probabilities over the puzzle's C_p classes
``confidence``      float32 [N]         the predicted answer's probability: position 0's for an
                                        ordinary puzzle, the product over the K positions for a
                                        sequence puzzle
``s_correct``       bool [N]            the answer value is right (S_acc's test)
``o_correct``       bool [N]            the chosen option is right (O_acc's test)
``source``          str (0-d)           JSON: the split, the model's params file (size, mtime) and the
                                        features' store entry the predictions came from
==================  ==================  ===========================================================

``ensure`` recomputes the file only when ``source`` no longer matches the workdir, so rewriting the page
is cheap.
"""

from __future__ import annotations

import json
import os
import pathlib
import zipfile
from collections.abc import Mapping

import numpy as np

from smartvlm_jax import features, fileio, metrics, puzzles
from smartvlm_jax.workdir import Workdir

TOP_K = 3
FIELDS = (
    "puzzle_ids",
    "instance_ids",
    "preds",
    "labels",
    "option_values",
    "answer_index",
    "option_index",
    "top_values",
    "top_probs",
    "confidence",
    "s_correct",
    "o_correct",
)


class NoFeaturesError(FileNotFoundError):
    """The run stored no tower features for the split (``cache_features=False``, or the store is gone)."""


def record_dir(workdir: Workdir) -> pathlib.Path | None:
    """The folder whose ``features.json`` describes this run's features: the workdir itself, or, for a
    member of a group trained together (``train.train_members``, a sweep's row), the group's root."""
    for folder in (workdir.root, workdir.root.parent):
        if (folder / features.RECORD_FILE).is_file():
            return folder
    return None


def source_of(workdir: str | os.PathLike, split: str) -> dict:
    """What the predictions of ``split`` depend on, as a predictions file's ``source`` holds it: the split,
    the best model's params files (name -> [bytes, mtime in ns]), the features' store entry and the
    folder of their record. Raises NoFeaturesError when the run stored no features for ``split``."""
    workdir = Workdir(workdir)
    folder = record_dir(workdir)
    if folder is None:
        raise NoFeaturesError(f"{workdir.root} has no {features.RECORD_FILE}: the run stored no features")
    record = json.loads((folder / features.RECORD_FILE).read_text())
    if split not in record.get("splits", {}):
        raise NoFeaturesError(f"{folder / features.RECORD_FILE} has no {split!r} split")
    params = [p for p in sorted(workdir.best_model.glob("*")) if p.is_file()]
    return {
        "split": split,
        "model": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in params},
        "features": record["splits"][split]["entry"],
        "record": str(folder),
    }


def path(workdir: str | os.PathLike, split: str = "test") -> pathlib.Path:
    """``<workdir>/<split>_predictions.npz``."""
    return Workdir(workdir).predictions(split)


def load(file: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a predictions file (see the module docstring), ``source`` as a dict."""
    with np.load(file, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    out["source"] = json.loads(str(out["source"]))
    return out


def compute(workdir: str | os.PathLike, split: str = "test", batch_size: int = 256) -> dict[str, np.ndarray]:
    """The arrays of the predictions file for ``split``, from the workdir's best model and stored features.

    The head runs jitted on batches of ``batch_size`` (the last padded, so one program is compiled).
    Raises NoFeaturesError when the run stored no features for ``split``.
    """
    import jax

    from smartvlm_jax import reasoner

    wd = Workdir(workdir)
    source = source_of(wd, split)
    try:
        cache = features.read_recorded(source["record"], split)
    except FileNotFoundError as e:
        raise NoFeaturesError(f"{wd.root}: the {split} features are gone ({e})") from None
    model, variables, cfg = reasoner.load(wd.best_model)

    # The variables are an argument, not constants of the program: a head's millions of weights folded
    # into the HLO made its compile slower and its persistent-cache key differ from run to run (issue 30).
    @jax.jit
    def forward(variables, vision, text, pids):
        logits = model.apply(variables, vision, text, pids, train=False)
        top_p, top_v = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), TOP_K)
        return reasoner.predictions(logits, pids, cfg), top_v, top_p

    pids = np.asarray(cache["puzzle_ids"], np.int64)
    n = len(pids)
    outs = []
    for start in range(0, n, batch_size):
        take = np.arange(start, min(start + batch_size, n))
        padded = np.concatenate([take, np.full(batch_size - len(take), take[0])])
        batch = [np.asarray(features.read_rows(cache[k], padded), np.float32) for k in ("vision", "text")]
        out = jax.device_get(forward(variables, *batch, pids[padded].astype(np.int32)))
        outs.append([np.asarray(o)[: len(take)] for o in out])
    features.release_all(cache)
    k = puzzles.NUM_DECODE_STEPS
    if outs:
        preds, top_v, top_p = (np.concatenate(x) for x in zip(*outs, strict=True))
    else:
        preds, top_v, top_p = np.zeros((0, k)), np.zeros((0, k, TOP_K)), np.zeros((0, k, TOP_K))
    labels = np.asarray(cache["labels"], np.int64)
    option_values = np.asarray(cache["option_values"], np.int64)
    answer_index = np.asarray(cache["answer_index"], np.int64)
    preds = preds.astype(np.int64)
    s_correct, o_correct = metrics.correctness(preds, labels, pids, option_values, answer_index)
    is_seq = np.isin(pids, list(puzzles.SEQUENCE_PUZZLES))
    confidence = np.where(is_seq, np.prod(top_p[:, :, 0], axis=1), top_p[:, 0, 0])
    return {
        "puzzle_ids": pids,
        "instance_ids": np.asarray(cache["instance_ids"], np.int64),
        "preds": preds,
        "labels": labels,
        "option_values": option_values,
        "answer_index": answer_index,
        "option_index": metrics.select_options(preds, pids, option_values).astype(np.int64),
        "top_values": top_v.astype(np.int64),
        "top_probs": top_p.astype(np.float32),
        "confidence": confidence.astype(np.float32),
        "s_correct": s_correct.astype(bool),
        "o_correct": o_correct.astype(bool),
        "source": source,
    }


def save(arrays: Mapping[str, np.ndarray], file: str | os.PathLike) -> pathlib.Path:
    """Writes ``arrays`` (the fields of the module docstring; ``source`` a JSON-able dict) to ``file``
    atomically and returns its path. KeyError naming a missing field, before anything is written."""
    file = pathlib.Path(file)
    payload = {k: np.asarray(arrays[k]) for k in FIELDS}
    source = np.asarray(json.dumps(arrays["source"], sort_keys=True))
    # A file object, not a name: given a name, numpy would append ".npz" to the temporary one.
    with fileio.atomic_open(file, "wb") as f:
        np.savez_compressed(f, **payload, source=source)
    return file


def ensure(workdir: str | os.PathLike, split: str = "test") -> dict[str, np.ndarray]:
    """The split's predictions: read from ``<workdir>/<split>_predictions.npz`` when it matches the
    workdir's model and features, else computed (:func:`compute`) and written there.

    Raises NoFeaturesError when the run stored no features for ``split``.
    """
    wd = Workdir(workdir)
    file = path(wd, split)
    source = source_of(wd, split)
    if file.is_file():
        try:
            stored = load(file)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            stored = None  # unreadable (a killed write): computed again below
        if stored is not None and stored["source"] == source and all(k in stored for k in FIELDS):
            return stored
    arrays = compute(wd, split)
    save(arrays, file)
    return arrays
