"""Evaluation metrics of SPEC section 8 as pure numpy functions: S_acc, O_acc, err, per puzzle, per skill
class, and the greedy and chance baselines.

Everything here runs on the host, on numpy arrays accumulated over an evaluation split, so that the metric
definitions live in one place and are independent of how the predictions were produced (jitted step,
converted reference checkpoint, greedy baseline).

Conventions:
- Accuracies are fractions in [0, 1] (the console table shows percentages). err is a fraction of C_p.
- An answer is a row of NUM_DECODE_STEPS values (SPEC section 2): ordinary puzzles use position 0 only,
  sequence puzzles use all positions (padded with the puzzle's pad value, which must be predicted too).
- A mean over nothing (no samples, no non-sequence samples) is NaN; `write_results` stores it as null.

The reference (merlresearch/SMART `utils.get_option_sel_acc`, `main.val_loop`) has two accidents that
`reference_quirks=True` reproduces:
- For the non-numeric-option puzzles it compares the predicted *value* with the correct option's *index*
  (0..4). That agrees with the intended comparison only where the options are the letters A..E (value =
  index); for, e.g., puzzle 32 (letters "R", "L", ...) or 51 (options "1".."5") it does not. The intended
  comparison (default) is the predicted value against the correct option's value.
- It divides the summed err by all samples, sequence puzzles included (they add 0); SPEC asks for the
  mean over non-sequence samples (default). (Its per-batch C_p lookup is also misaligned with the samples;
  that depends on batch composition and is not reproduced.)
"""

from __future__ import annotations

import csv
import math
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from smartvlm_jax import assets, puzzles

NUM_OPTIONS = 5


# ----------------------------------------------------------------------------------------------------------
# Skill classes
# ----------------------------------------------------------------------------------------------------------


def read_skill_types(csv_path: str | os.PathLike[str] | None = None) -> dict[int, str]:
    """Skill type of every puzzle id, read from SMART_info_v2.csv (column `type`, lower-cased).

    Defaults to the copy shipped in `smartvlm_jax/assets`. The result includes the ninth type "order",
    which `compute_metrics` does not report as a class (SPEC section 1).
    """
    path = pathlib.Path(csv_path) if csv_path is not None else assets.path("SMART_info_v2.csv")
    with open(path, newline="", encoding="utf-8") as f:
        return {int(row["id"]): row["type"].strip().lower() for row in csv.DictReader(f)}


# ----------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------


def _mean(x: np.ndarray) -> float:
    """Mean as a Python float; NaN for an empty array (instead of numpy's warning)."""
    return float(np.mean(x)) if x.size else math.nan


def _as_arrays(
    preds: np.ndarray,
    labels: np.ndarray,
    puzzle_ids: np.ndarray,
    option_values: np.ndarray,
    answer_index: np.ndarray,
    mask: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validates shapes, drops masked (padding) rows and widens to int64 (no unsigned/narrow overflow)."""
    preds = np.asarray(preds)
    labels = np.asarray(labels)
    puzzle_ids = np.asarray(puzzle_ids).reshape(-1)
    option_values = np.asarray(option_values)
    answer_index = np.asarray(answer_index).reshape(-1)
    n = puzzle_ids.shape[0]
    k = puzzles.NUM_DECODE_STEPS
    expected = {
        "preds": (preds, (n, k)),
        "labels": (labels, (n, k)),
        "option_values": (option_values, (n, NUM_OPTIONS, k)),
        "answer_index": (answer_index, (n,)),
    }
    for name, (array, shape) in expected.items():
        if array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape}, expected {shape} (N={n} from puzzle_ids)")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool).reshape(-1)
        if mask.shape != (n,):
            raise ValueError(f"mask has shape {mask.shape}, expected ({n},)")
        preds, labels, puzzle_ids = preds[mask], labels[mask], puzzle_ids[mask]
        option_values, answer_index = option_values[mask], answer_index[mask]
    if answer_index.size and (answer_index.min() < 0 or answer_index.max() >= NUM_OPTIONS):
        raise ValueError(f"answer_index must be in [0, {NUM_OPTIONS}), got {np.unique(answer_index)}")
    as64 = lambda a: a.astype(np.int64)
    return as64(preds), as64(labels), as64(puzzle_ids), as64(option_values), as64(answer_index)


def _num_classes_of(puzzle_ids: np.ndarray, num_classes: Mapping[int, int]) -> np.ndarray:
    """C_p of every sample; a puzzle missing from `num_classes` is an error naming it."""
    unique, inverse = np.unique(puzzle_ids, return_inverse=True)
    missing = [int(p) for p in unique if int(p) not in num_classes]
    if missing:
        raise KeyError(f"num_classes has no entry for puzzle ids {missing}")
    return np.array([num_classes[int(p)] for p in unique], dtype=np.int64)[inverse]


def select_options(preds: np.ndarray, puzzle_ids: np.ndarray, option_values: np.ndarray) -> np.ndarray:
    """Index (0..4) of the option each prediction chooses (SPEC section 8), -1 where none is chosen.

    Numeric-option puzzles: the option whose value is nearest to the predicted value (np.argmin: the first
    option wins a tie, as in the reference). Non-numeric-option puzzles and sequence puzzles: the first
    option whose value equals the prediction exactly (the whole sequence for sequence puzzles), else -1.
    `preds` int [N, K], `puzzle_ids` int [N], `option_values` int [N, 5, K]. Shared by the O_acc metric and
    the predictor, so an answered letter follows exactly the rule O_acc scores.
    """
    preds, option_values = np.asarray(preds, np.int64), np.asarray(option_values, np.int64)
    puzzle_ids = np.asarray(puzzle_ids).reshape(-1)
    is_seq = np.isin(puzzle_ids, list(puzzles.SEQUENCE_PUZZLES))
    non_numeric = np.isin(puzzle_ids, list(puzzles.NON_NUMERIC_OPTION_PUZZLES))
    nearest = np.argmin(np.abs(option_values[:, :, 0] - preds[:, None, 0]), axis=1)
    same = np.where(
        is_seq[:, None],
        np.all(option_values == preds[:, None, :], axis=2),
        option_values[:, :, 0] == preds[:, None, 0],
    )
    exact = np.where(same.any(axis=1), np.argmax(same, axis=1), -1)
    return np.where(is_seq | non_numeric, exact, nearest)


def correctness(
    preds: np.ndarray,
    labels: np.ndarray,
    puzzle_ids: np.ndarray,
    option_values: np.ndarray,
    answer_index: np.ndarray,
    *,
    reference_quirks: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample correctness (s_correct, o_correct), bool [N], for unmasked int64 arrays.

    S: position 0 equals the label; sequence puzzles need all NUM_DECODE_STEPS positions equal.
    O: the predicted value is mapped to the nearest option value and that option must be the correct one
    (np.argmin: the first option wins a tie, as in the reference); non-numeric-option puzzles compare the
    predicted value with the correct option's value (with `reference_quirks`, with its index, as the
    reference does); sequence puzzles need an exact match of the whole sequence.
    """
    n = puzzle_ids.shape[0]
    is_seq = np.isin(puzzle_ids, list(puzzles.SEQUENCE_PUZZLES))
    non_numeric = np.isin(puzzle_ids, list(puzzles.NON_NUMERIC_OPTION_PUZZLES))
    pred0 = preds[:, 0]
    seq_exact = np.all(preds == labels, axis=1)
    s_correct = np.where(is_seq, seq_exact, pred0 == labels[:, 0])

    nearest = select_options(preds, puzzle_ids, option_values)  # used for numeric-option puzzles only
    correct_value = option_values[np.arange(n), answer_index, 0]
    direct_target = answer_index if reference_quirks else correct_value
    o_correct = np.where(
        is_seq, seq_exact, np.where(non_numeric, pred0 == direct_target, nearest == answer_index)
    )
    return s_correct, o_correct


def _per_puzzle(
    puzzle_ids: np.ndarray, s_correct: np.ndarray, o_correct: np.ndarray
) -> dict[int, dict[str, float | int]]:
    """S_acc, O_acc and count of every puzzle present, keyed by puzzle id in ascending order."""
    unique, inverse, counts = np.unique(puzzle_ids, return_inverse=True, return_counts=True)
    s_sum = np.bincount(inverse, weights=s_correct, minlength=unique.size)
    o_sum = np.bincount(inverse, weights=o_correct, minlength=unique.size)
    return {
        int(p): {"S_acc": float(s / c), "O_acc": float(o / c), "n": int(c)}
        for p, s, o, c in zip(unique, s_sum, o_sum, counts, strict=True)
    }


def per_skill(
    per_puzzle: Mapping[int, Mapping[str, float]],
    skills: Mapping[int, str] | None = None,
    classes: tuple[str, ...] = puzzles.SKILL_CLASSES,
) -> dict[str, dict[str, float | int]]:
    """Per skill class, the unweighted mean of the per-puzzle accuracies over the puzzles present.

    Only the eight SKILL_CLASSES are reported by default ("order" puzzles belong to none:
    :func:`other_types` lists them); a class with no puzzle present is left out rather than reported as 0
    (it was not measured). ``classes`` names other groups of types to report the same way.
    """
    skills = read_skill_types() if skills is None else skills
    out: dict[str, dict[str, float | int]] = {}
    for skill in classes:
        members = [per_puzzle[p] for p in per_puzzle if skills.get(p) == skill]
        if members:
            out[skill] = {
                "S_acc": float(np.mean([m["S_acc"] for m in members])),
                "O_acc": float(np.mean([m["O_acc"] for m in members])),
                "num_puzzles": len(members),
            }
    return out


def other_types(puzzle_ids: Iterable[int], skills: Mapping[int, str]) -> tuple[str, ...]:
    """The types of these puzzles that are not skill classes ("order", or "?" for a puzzle without one),
    sorted: the groups :func:`compute_metrics` reports beside the skill classes so that no puzzle drops
    out of the per-type rows."""
    return tuple(sorted({skills.get(int(p), "?") for p in puzzle_ids} - set(puzzles.SKILL_CLASSES)))


def compute_metrics(
    preds: np.ndarray,
    labels: np.ndarray,
    puzzle_ids: np.ndarray,
    option_values: np.ndarray,
    answer_index: np.ndarray,
    num_classes: Mapping[int, int],
    mask: np.ndarray | None = None,
    skills: Mapping[int, str] | None = None,
    *,
    reference_quirks: bool = False,
) -> dict[str, Any]:
    """SPEC section 8 metrics of one evaluation split.

    Args:
      preds: int [N, NUM_DECODE_STEPS], argmax per decode position (ordinary puzzles use position 0).
      labels: int [N, NUM_DECODE_STEPS], answer values (SPEC section 2).
      puzzle_ids: int [N].
      option_values: int [N, 5, NUM_DECODE_STEPS], the value of each option encoded like the labels.
      answer_index: int [N], index 0..4 of the correct option.
      num_classes: C_p per puzzle id (for err).
      mask: bool [N], False on padding rows, which are left out of everything.
      skills: skill type per puzzle id; defaults to the shipped SMART_info_v2.csv.
      reference_quirks: reproduce the reference's accidents (see the module docstring).

    Returns:
      {"S_acc", "O_acc", "err", "n", "per_puzzle": {pid: {"S_acc", "O_acc", "n"}},
       "per_skill": {skill: {"S_acc", "O_acc", "num_puzzles"}}, "per_other_type": {type: ...}}. Overall
      accuracies are means over samples, per-skill ones means over puzzles (as in the SMART paper's
      tables); "per_other_type" groups the puzzles of the types outside the eight skill classes ("order")
      the same way, so every puzzle is in one group.
    """
    preds, labels, puzzle_ids, option_values, answer_index = _as_arrays(
        preds, labels, puzzle_ids, option_values, answer_index, mask
    )
    s_correct, o_correct = correctness(
        preds, labels, puzzle_ids, option_values, answer_index, reference_quirks=reference_quirks
    )
    ordinary = ~np.isin(puzzle_ids, list(puzzles.SEQUENCE_PUZZLES))
    c_p = _num_classes_of(puzzle_ids, num_classes)
    rel_err = np.abs(preds[:, 0] - labels[:, 0])[ordinary] / c_p[ordinary]
    if reference_quirks:
        # The reference sums err over ordinary samples and divides by all samples.
        err = float(rel_err.sum() / puzzle_ids.size) if puzzle_ids.size else math.nan
    else:
        err = _mean(rel_err)
    by_puzzle = _per_puzzle(puzzle_ids, s_correct, o_correct)
    skills = read_skill_types() if skills is None else skills
    return {
        "S_acc": _mean(s_correct),
        "O_acc": _mean(o_correct),
        "err": err,
        "n": int(puzzle_ids.size),
        "per_puzzle": by_puzzle,
        "per_skill": per_skill(by_puzzle, skills),
        "per_other_type": per_other_type(by_puzzle, skills),
    }


def per_other_type(by_puzzle: Mapping[int, Mapping[str, Any]], skills: Mapping[int, str]) -> dict[str, dict]:
    """:func:`per_skill` over the puzzle types outside the skill classes (:func:`other_types`; "?" for a
    puzzle without a type)."""
    return per_skill(by_puzzle, {p: skills.get(p, "?") for p in by_puzzle}, other_types(by_puzzle, skills))


# ----------------------------------------------------------------------------------------------------------
# Baselines
# ----------------------------------------------------------------------------------------------------------


def greedy_predictions(
    train_labels: np.ndarray, train_puzzle_ids: np.ndarray, train_mask: np.ndarray | None = None
) -> dict[int, np.ndarray]:
    """The most frequent training answer of every puzzle, as a NUM_DECODE_STEPS row.

    Ordinary puzzles: the mode of label position 0 (other positions 0). Sequence puzzles: the most frequent
    whole sequence, since S_acc needs every position right. Ties go to the smallest value
    (lexicographically smallest sequence), so the baseline is deterministic.
    """
    train_labels = np.asarray(train_labels, dtype=np.int64)
    train_puzzle_ids = np.asarray(train_puzzle_ids, dtype=np.int64).reshape(-1)
    if train_mask is not None:
        keep = np.asarray(train_mask, dtype=bool).reshape(-1)
        train_labels, train_puzzle_ids = train_labels[keep], train_puzzle_ids[keep]
    out: dict[int, np.ndarray] = {}
    for pid in np.unique(train_puzzle_ids):
        rows = train_labels[train_puzzle_ids == pid]
        if not puzzles.is_sequence(int(pid)):
            rows = np.pad(rows[:, :1], ((0, 0), (0, rows.shape[1] - 1)))
        values, counts = np.unique(rows, axis=0, return_counts=True)
        out[int(pid)] = values[np.argmax(counts)]
    return out


def greedy_baseline(
    train_labels: np.ndarray,
    train_puzzle_ids: np.ndarray,
    labels: np.ndarray,
    puzzle_ids: np.ndarray,
    option_values: np.ndarray,
    answer_index: np.ndarray,
    num_classes: Mapping[int, int],
    mask: np.ndarray | None = None,
    train_mask: np.ndarray | None = None,
    skills: Mapping[int, str] | None = None,
    *,
    reference_quirks: bool = False,
) -> dict[str, Any]:
    """Greedy (most frequent training answer per puzzle) and uniform-chance baselines on an eval split.

    The greedy prediction is scored by `compute_metrics`, so its S_acc and O_acc follow exactly the same
    rules as the model's. A puzzle absent from the training labels (puzzle split) has no prior: it is
    predicted as the value 0 and listed in "greedy_missing_puzzles".

    Uniform chance, as a mean over samples: S_acc is 1/C_p for an ordinary puzzle and (1/C_p)^K for a
    sequence puzzle (a uniform guess at each of the K decode positions must get all of them right, pad
    positions included); O_acc is 1/5 (a uniformly chosen option).

    Returns {"greedy_S_acc", "greedy_O_acc", "chance_S_acc", "chance_O_acc", "greedy_per_puzzle",
    "greedy_per_skill", "greedy_per_other_type", "greedy_missing_puzzles", "chance_per_skill",
    "chance_per_other_type"}, to be merged into the split's metrics. The per-skill chance is the mean over
    the skill's puzzles of each puzzle's chance, as the per-skill accuracies are means over puzzles.
    """
    mode = greedy_predictions(train_labels, train_puzzle_ids, train_mask)
    pids_flat = np.asarray(puzzle_ids, dtype=np.int64).reshape(-1)
    greedy_preds = np.zeros((pids_flat.size, puzzles.NUM_DECODE_STEPS), dtype=np.int64)
    for pid, row in mode.items():
        greedy_preds[pids_flat == pid] = row
    m = compute_metrics(
        greedy_preds,
        labels,
        pids_flat,
        option_values,
        answer_index,
        num_classes,
        mask,
        skills,
        reference_quirks=reference_quirks,
    )
    kept = pids_flat if mask is None else pids_flat[np.asarray(mask, dtype=bool).reshape(-1)]
    chance_s, chance_pp = chance_scores(kept, num_classes)
    skills = read_skill_types() if skills is None else skills
    return {
        "greedy_S_acc": m["S_acc"],
        "greedy_O_acc": m["O_acc"],
        "chance_S_acc": _mean(chance_s),
        "chance_O_acc": 1.0 / NUM_OPTIONS if kept.size else math.nan,
        "greedy_per_puzzle": m["per_puzzle"],
        "greedy_per_skill": m["per_skill"],
        "greedy_per_other_type": m["per_other_type"],
        "greedy_missing_puzzles": sorted({int(p) for p in kept} - set(mode)),
        "chance_per_skill": per_skill(chance_pp, skills),
        "chance_per_other_type": per_other_type(chance_pp, skills),
    }


def chance_scores(
    puzzle_ids: np.ndarray, num_classes: Mapping[int, int]
) -> tuple[np.ndarray, dict[int, dict[str, float]]]:
    """Uniform chance: (S_acc of each sample, float64 [N]: 1/C_p for an ordinary puzzle, (1/C_p)^K for a
    sequence puzzle of K decode positions; {puzzle id: {"S_acc", "O_acc": 1/5}})."""
    c_p = _num_classes_of(puzzle_ids, num_classes).astype(np.float64)
    is_seq = np.isin(puzzle_ids, list(puzzles.SEQUENCE_PUZZLES))
    chance_s = np.where(is_seq, c_p ** -float(puzzles.NUM_DECODE_STEPS), 1.0 / c_p)
    per_puzzle = {
        int(p): {"S_acc": float(chance_s[puzzle_ids == p][0]), "O_acc": 1.0 / NUM_OPTIONS}
        for p in np.unique(puzzle_ids)
    }
    return chance_s, per_puzzle


# ----------------------------------------------------------------------------------------------------------
# The split evaluator
# ----------------------------------------------------------------------------------------------------------


def evaluate_split(
    preds: np.ndarray,
    labels: Mapping[str, np.ndarray],
    num_classes: Mapping[int, int],
    train_labels: Mapping[str, np.ndarray] | None = None,
    mask: np.ndarray | None = None,
    skills: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """The metrics of one evaluation split, with its greedy and chance baselines: what training,
    ``evaluate`` and ``predict --split`` report, computed in this one place.

    Args:
      preds: int [N, NUM_DECODE_STEPS], the predicted values.
      labels: the split's label arrays (``smart101.label_arrays``): "labels" [N, K], "puzzle_ids" [N],
        "option_values" [N, 5, K], "answer_index" [N].
      num_classes: C_p per puzzle id.
      train_labels: the training split's label arrays; given, the greedy (most frequent training answer)
        and chance baselines are merged in (keys of :func:`greedy_baseline`).
      mask: bool [N], False on padding rows.
      skills: skill type per puzzle id (``smart101.read_puzzle_info`` of the data root); default: the
        shipped SMART_info_v2.csv.

    Returns :func:`compute_metrics`'s dict, plus the baselines' keys when ``train_labels`` is given.
    """
    held = [labels[k] for k in ("labels", "puzzle_ids", "option_values", "answer_index")]
    metrics = compute_metrics(preds, *held, num_classes, mask=mask, skills=skills)
    if train_labels is not None:
        train = (train_labels["labels"], train_labels["puzzle_ids"])
        metrics.update(greedy_baseline(*train, *held, num_classes, mask=mask, skills=skills))
    return metrics


# ----------------------------------------------------------------------------------------------------------
# Several members (seeds) of one configuration
# ----------------------------------------------------------------------------------------------------------

OVERALL = "all"  # the group name of the whole split in :func:`group_accuracies`


def group_accuracies(split: Mapping[str, Any], prefix: str = "") -> dict[tuple[str, str], float]:
    """One split's accuracies keyed (metric, group): ("S_acc", "all"), ("O_acc", "counting"), ...

    ``split`` is a split's metrics (:func:`evaluate_split`, or its ``results.json`` entry); ``prefix``
    "greedy_" or "chance_" reads that baseline's keys instead. Groups: "all", then each skill class of
    "per_skill", then each type of "per_other_type".
    """
    out = {}
    for metric in ("S_acc", "O_acc"):
        if split.get(f"{prefix}{metric}") is not None:
            out[(metric, OVERALL)] = float(split[f"{prefix}{metric}"])
        for key in ("per_skill", "per_other_type"):
            for group, values in split.get(f"{prefix}{key}", {}).items():
                out[(metric, group)] = float(values[metric])
    return out


def mean_and_std(
    values: Sequence[Mapping[tuple[str, str], float]],
) -> dict[tuple[str, str], tuple[float, float]]:
    """Per key of :func:`group_accuracies`, the mean and the sample standard deviation (ddof 1; NaN for
    one member) over several members' values. A key missing from a member is left out of the result.

    Raises ValueError when ``values`` is empty.
    """
    if not values:
        raise ValueError("mean_and_std needs at least one member's values")
    keys = [k for k in values[0] if all(k in v for v in values)]
    out = {}
    for key in keys:
        x = np.asarray([v[key] for v in values], np.float64)
        out[key] = (float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan)
    return out
