"""Evaluation metrics and result reports of SPEC section 8: S_acc, O_acc, err, per puzzle, per skill class.

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
import json
import math
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from smartvlm_jax import assets, cli, puzzles

NUM_OPTIONS = 5
RESULTS_FILENAME = "results.json"

# Keys of metric dicts whose values are keyed by puzzle id (int in memory, str in JSON).
_PUZZLE_KEYED = ("per_puzzle", "greedy_per_puzzle")


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
    per_puzzle: Mapping[int, Mapping[str, float]], skills: Mapping[int, str] | None = None
) -> dict[str, dict[str, float | int]]:
    """Per skill class, the unweighted mean of the per-puzzle accuracies over the puzzles present.

    Only the eight SKILL_CLASSES are reported ("order" puzzles belong to none); a class with no puzzle
    present is left out rather than reported as 0 (it was not measured).
    """
    skills = read_skill_types() if skills is None else skills
    out: dict[str, dict[str, float | int]] = {}
    for skill in puzzles.SKILL_CLASSES:
        members = [per_puzzle[p] for p in per_puzzle if skills.get(p) == skill]
        if members:
            out[skill] = {
                "S_acc": float(np.mean([m["S_acc"] for m in members])),
                "O_acc": float(np.mean([m["O_acc"] for m in members])),
                "num_puzzles": len(members),
            }
    return out


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
       "per_skill": {skill: {"S_acc", "O_acc", "num_puzzles"}}}. Overall accuracies are means over samples,
      per-skill ones means over puzzles (as in the SMART paper's tables).
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
    return {
        "S_acc": _mean(s_correct),
        "O_acc": _mean(o_correct),
        "err": err,
        "n": int(puzzle_ids.size),
        "per_puzzle": by_puzzle,
        "per_skill": per_skill(by_puzzle, skills),
    }


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
    "greedy_per_skill", "greedy_missing_puzzles"}, to be merged into the split's metrics.
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
    c_p = _num_classes_of(kept, num_classes).astype(np.float64)
    is_seq = np.isin(kept, list(puzzles.SEQUENCE_PUZZLES))
    chance_s = np.where(is_seq, c_p ** -float(puzzles.NUM_DECODE_STEPS), 1.0 / c_p)
    return {
        "greedy_S_acc": m["S_acc"],
        "greedy_O_acc": m["O_acc"],
        "chance_S_acc": _mean(chance_s),
        "chance_O_acc": 1.0 / NUM_OPTIONS if kept.size else math.nan,
        "greedy_per_puzzle": m["per_puzzle"],
        "greedy_per_skill": m["per_skill"],
        "greedy_missing_puzzles": sorted({int(p) for p in kept} - set(mode)),
    }


# ----------------------------------------------------------------------------------------------------------
# Reports: console table, results.json, plots
# ----------------------------------------------------------------------------------------------------------


def _pct(x: Any) -> str:
    """A fraction as a percentage with one decimal; "-" when absent or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100.0 * float(x):.1f}"


def format_table(metrics: Mapping[str, Any], skills: Mapping[int, str] | None = None) -> str:
    """A markdown table for the console: the overall line, chance, each skill class, each puzzle.

    Accuracies are in percent; greedy-baseline columns are filled where `metrics` carries the keys of
    `greedy_baseline` (merge the two dicts). `skills` (default: the shipped csv) labels puzzle rows.
    """
    skills = read_skill_types() if skills is None else skills
    per_puzzle = {int(k): v for k, v in metrics.get("per_puzzle", {}).items()}
    greedy_pp = {int(k): v for k, v in metrics.get("greedy_per_puzzle", {}).items()}
    greedy_ps = metrics.get("greedy_per_skill", {})
    lines = [
        "| group | n | S_acc % | O_acc % | greedy S_acc % | greedy O_acc % | err |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    err = metrics.get("err")
    err_text = "-" if err is None or math.isnan(err) else f"{err:.3f}"
    lines.append(
        f"| **all** | {metrics.get('n', '-')} | {_pct(metrics.get('S_acc'))} | "
        f"{_pct(metrics.get('O_acc'))} | "
        f"{_pct(metrics.get('greedy_S_acc'))} | {_pct(metrics.get('greedy_O_acc'))} | {err_text} |"
    )
    if "chance_S_acc" in metrics:
        lines.append(
            f"| uniform chance | | {_pct(metrics['chance_S_acc'])} | {_pct(metrics['chance_O_acc'])} | | | |"
        )
    for skill, row in metrics.get("per_skill", {}).items():
        g = greedy_ps.get(skill, {})
        lines.append(
            f"| {skill} ({row['num_puzzles']} puzzles) | | {_pct(row['S_acc'])} | {_pct(row['O_acc'])} | "
            f"{_pct(g.get('S_acc'))} | {_pct(g.get('O_acc'))} | |"
        )
    for pid in sorted(per_puzzle):
        row, g = per_puzzle[pid], greedy_pp.get(pid, {})
        lines.append(
            f"| puzzle {pid} ({skills.get(pid, '?')}) | {row['n']} | {_pct(row['S_acc'])} | "
            f"{_pct(row['O_acc'])} | {_pct(g.get('S_acc'))} | {_pct(g.get('O_acc'))} | |"
        )
    return "\n".join(lines)


def to_json_safe(obj: Any) -> Any:
    """A copy of `obj` that `json.dump` writes as strict JSON.

    int keys -> str, numpy scalars and arrays -> Python, NaN/inf -> null (strict JSON has no NaN).
    """
    if isinstance(obj, Mapping):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_json_safe(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _restore_int_keys(obj: Any) -> Any:
    """Inverse of the key conversion of `to_json_safe` for the puzzle-keyed tables (nested anywhere)."""
    if isinstance(obj, dict):
        return {
            k: (
                {int(pk): pv for pk, pv in v.items()}
                if k in _PUZZLE_KEYED and isinstance(v, dict)
                else _restore_int_keys(v)
            )
            for k, v in obj.items()
        }
    return obj


def write_results(
    workdir: str | os.PathLike[str], results: Mapping[str, Mapping[str, Any]], merge: bool = True
) -> pathlib.Path:
    """Writes `workdir/results.json` ({"val": metrics, "test": metrics, ...}) and returns its path.

    With `merge`, splits already in the file and not in `results` are kept, so re-evaluating one split
    does not erase the other. The write goes through a temporary file and a rename, so a killed run never
    leaves a truncated results.json.
    """
    path = pathlib.Path(workdir) / RESULTS_FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    content: dict[str, Any] = {}
    if merge and path.exists():
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    content.update(to_json_safe(results))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_results(workdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads `workdir/results.json`, with the per-puzzle tables keyed by int puzzle id again."""
    with open(pathlib.Path(workdir) / RESULTS_FILENAME, encoding="utf-8") as f:
        return _restore_int_keys(json.load(f))


PUZZLES_PER_PANEL = 34


def _bars(
    ax: Any,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    markers: Mapping[str, Sequence[float]],
    legend: bool = True,
) -> None:
    """Grouped bars (one group per label) plus optional per-group marker lines (e.g. the greedy level)."""
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
    for name, values in markers.items():
        ax.scatter(x, values, marker="_", s=200, color="black", zorder=3, label=name)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=90 if len(labels) > 40 else 0, fontsize=8 if len(labels) > 20 else 9)
    ax.set_ylim(0, 100)
    ax.margins(x=0.01)  # many groups: keep the side padding to about one bar
    ax.set_ylabel("accuracy %")
    ax.grid(axis="y", alpha=0.3)
    if legend:
        ax.legend(fontsize=8, loc="upper right", ncols=3)


def plot_results(
    metrics: Mapping[str, Any], out_dir: str | os.PathLike[str], prefix: str = "test"
) -> list[pathlib.Path]:
    """Saves `<prefix>_per_puzzle.png` and `<prefix>_per_skill.png` (S_acc and O_acc bars) in `out_dir`.

    The greedy baseline's S_acc is drawn as a black tick per bar group where `metrics` carries it. Uses
    matplotlib's object API (Figure + Agg canvas) rather than pyplot, so no global backend or figure state.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    to_pct = lambda rows, key: [100.0 * float(r[key]) if r.get(key) is not None else math.nan for r in rows]
    paths = []

    per_puzzle = {int(k): v for k, v in metrics.get("per_puzzle", {}).items()}
    pids = sorted(per_puzzle)
    rows = [per_puzzle[p] for p in pids]
    greedy_pp = {int(k): v for k, v in metrics.get("greedy_per_puzzle", {}).items()}
    greedy = to_pct([greedy_pp.get(p, {}) for p in pids], "S_acc") if greedy_pp else []
    # Up to PUZZLES_PER_PANEL bars a row: all 101 puzzles take 3 rows of readable, unrotated ids.
    panels = max(1, math.ceil(len(pids) / PUZZLES_PER_PANEL))
    per_panel = math.ceil(len(pids) / panels) if pids else 1
    width = max(6.0, 0.38 * min(len(pids), per_panel) + 2.0)
    fig = Figure(figsize=(width, 1.0 + 3.0 * panels), layout="constrained")
    for i, ax in enumerate(np.atleast_1d(fig.subplots(panels, 1))):
        part = slice(i * per_panel, (i + 1) * per_panel)
        markers = {"greedy S_acc": greedy[part]} if greedy else {}
        series = {"S_acc": to_pct(rows[part], "S_acc"), "O_acc": to_pct(rows[part], "O_acc")}
        _bars(ax, [str(p) for p in pids[part]], series, markers, legend=i == 0)
    ax.set_xlabel("puzzle id")
    fig.suptitle(
        f"{prefix}: per-puzzle accuracy "
        f"(all: S_acc {_pct(metrics.get('S_acc'))}%, O_acc {_pct(metrics.get('O_acc'))}%)"
    )
    paths.append(out / f"{prefix}_per_puzzle.png")
    fig.savefig(paths[-1], dpi=100)

    per_skill_rows = metrics.get("per_skill", {})
    skill_names = list(per_skill_rows)
    rows = [per_skill_rows[s] for s in skill_names]
    greedy_ps = metrics.get("greedy_per_skill", {})
    markers = (
        {"greedy S_acc": to_pct([greedy_ps.get(s, {}) for s in skill_names], "S_acc")} if greedy_ps else {}
    )
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.subplots()
    _bars(ax, skill_names, {"S_acc": to_pct(rows, "S_acc"), "O_acc": to_pct(rows, "O_acc")}, markers)
    ax.set_xlabel("skill class (mean over puzzles present)")
    ax.set_title(f"{prefix}: per-skill accuracy")
    paths.append(out / f"{prefix}_per_skill.png")
    fig.savefig(paths[-1], dpi=100)
    return paths


def report(
    workdir: str | os.PathLike[str], split: str, metrics: Mapping[str, Any], plots: bool = True
) -> str:
    """For the trainer and the CLI: writes results.json (merging splits) and the split's plots.

    Returns the console table.
    """
    write_results(workdir, {split: metrics})
    if plots:
        plot_results(metrics, workdir, prefix=split)
    return format_table(metrics)


# ----------------------------------------------------------------------------------------------------------
# Command line: `python -m smartvlm_jax.evaluate --workdir DIR [--split val|test]`.


def main(argv: Sequence[str] | None = None) -> int:
    """Re-evaluate the best checkpoint of a training workdir on a split; update results.json and plots."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m smartvlm_jax.evaluate", description=main.__doc__)
    parser.add_argument("--workdir", required=True, help="training workdir (holds config.json, best_model)")
    parser.add_argument("--split", default="test", choices=("val", "test"), help="split to evaluate")
    parser.add_argument("--traceback", action="store_true", help=cli.TRACEBACK_HELP)
    args = parser.parse_args(argv)
    from smartvlm_jax import train  # the trainer imports this module: import it only when run as a CLI

    return cli.run(lambda: print(train.evaluate_workdir(args.workdir, args.split)["table"]), args.traceback)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
