"""Metric functions (smartvlm_jax.metrics) and reports (smartvlm_jax.reports) on hand-made cases."""

import json
import math
import shlex

import numpy as np
import pytest

from smartvlm_jax import metrics, puzzles, reports
from smartvlm_jax.workdir import Workdir
from tests.support.summary import summary_line, summary_paths

K = puzzles.NUM_DECODE_STEPS


def _row(*values: int) -> list[int]:
    """An answer row: the given leading values, the rest 0 (ordinary puzzles use position 0 only)."""
    return list(values) + [0] * (K - len(values))


SEQ_A = [1, 2, 3] + [26] * (K - 3)  # a puzzle-16 answer "1, 2, 3" padded with 26
SEQ_B = [3, 2, 1] + [26] * (K - 3)
SEQ_A_BAD_PAD = SEQ_A[:-1] + [25]  # right on every real entry, wrong on one pad position
SEQ_OPTIONS_A = [SEQ_A, SEQ_B, [1] * K, [2] * K, [4] * K]  # correct option 0


def _opts(*values: int) -> list[list[int]]:
    return [_row(v) for v in values]


# (puzzle id, option values, answer index, label row, prediction row)
CASES = [
    (2, _opts(2, 3, 4, 5, 9), 2, _row(4), _row(4)),  # right: S, O
    (2, _opts(2, 3, 4, 5, 9), 2, _row(4), _row(6)),  # nearest is 5 (index 3): wrong S and O, err 2/10
    (2, _opts(2, 4, 6, 8, 9), 1, _row(4), _row(5)),  # tie 4|6, the first (4) wins: O right, err 1/10
    (2, _opts(2, 4, 6, 8, 9), 2, _row(6), _row(7)),  # tie 6|8, the first (6) wins: O right, err 1/10
    (16, SEQ_OPTIONS_A, 0, SEQ_A, SEQ_A),  # sequence, exact: S, O
    (16, SEQ_OPTIONS_A, 0, SEQ_A, SEQ_A_BAD_PAD),  # one pad position wrong: neither
    (32, _opts(17, 11, 10, 13, 14), 3, _row(13), _row(13)),  # non-numeric (letters R L K N O), right value
    # non-numeric: 16 is nearest to the correct 17, but "compare directly" is not nearest-option: O wrong
    (32, _opts(17, 11, 10, 13, 14), 0, _row(17), _row(16)),
]
MASKED = (99, _opts(1, 2, 3, 4, 5), 0, _row(1), _row(1))  # padding row; puzzle 99 has no C_p on purpose
NUM_CLASSES = {2: 10, 16: 27, 32: 20}
SKILLS = {2: "counting", 16: "counting", 32: "path", 99: "math"}


def _arrays(cases):
    pids, opts, ans, labels, preds = zip(*cases, strict=True)
    return (
        np.array(preds, dtype=np.int32),
        np.array(labels, dtype=np.int32),
        np.array(pids, dtype=np.int32),
        np.array(opts, dtype=np.int32),
        np.array(ans, dtype=np.int32),
    )


def _metrics(**kwargs):
    preds, labels, pids, opts, ans = _arrays([*CASES, MASKED])
    mask = np.array([True] * len(CASES) + [False])
    return metrics.compute_metrics(
        preds, labels, pids, opts, ans, NUM_CLASSES, mask=mask, skills=SKILLS, **kwargs
    )


def test_overall_metrics_exact():
    m = _metrics()
    assert m["n"] == 8  # the masked row is left out (and its missing C_p is never looked up)
    assert m["S_acc"] == pytest.approx(3 / 8)
    assert m["O_acc"] == pytest.approx(5 / 8)
    # err over the 6 non-sequence samples: (0 + 2/10 + 1/10 + 1/10 + 0 + 1/20) / 6
    assert m["err"] == pytest.approx(0.45 / 6)


def test_per_puzzle_and_per_skill():
    m = _metrics()
    assert m["per_puzzle"] == {
        2: {"S_acc": 0.25, "O_acc": 0.75, "n": 4},
        16: {"S_acc": 0.5, "O_acc": 0.5, "n": 2},
        32: {"S_acc": 0.5, "O_acc": 0.5, "n": 2},
    }
    # counting = mean over its puzzles (2 and 16), not over samples (which would give S 2/6).
    assert m["per_skill"]["counting"] == {"S_acc": 0.375, "O_acc": 0.625, "num_puzzles": 2}
    assert m["per_skill"]["path"] == {"S_acc": 0.5, "O_acc": 0.5, "num_puzzles": 1}
    # math's only puzzle was masked out; the other classes have no puzzle: absent, not 0.
    assert set(m["per_skill"]) == {"counting", "path"}


def test_per_skill_ignores_order_and_absent_puzzles():
    per_puzzle = {
        1: {"S_acc": 1.0, "O_acc": 1.0, "n": 10},
        2: {"S_acc": 0.0, "O_acc": 0.5, "n": 1000},
        3: {"S_acc": 0.9, "O_acc": 0.9, "n": 5},
    }
    skills = {1: "counting", 2: "counting", 3: "order", 4: "counting"}
    out = metrics.per_skill(per_puzzle, skills)
    assert out == {"counting": {"S_acc": 0.5, "O_acc": 0.75, "num_puzzles": 2}}


def test_sequence_needs_every_position():
    # Position 0 right but the rest wrong must not count for a sequence puzzle.
    preds, labels, pids, opts, ans = _arrays([(16, SEQ_OPTIONS_A, 0, SEQ_A, [1] + [0] * (K - 1))])
    m = metrics.compute_metrics(preds, labels, pids, opts, ans, NUM_CLASSES, skills=SKILLS)
    assert m["S_acc"] == 0.0 and m["O_acc"] == 0.0
    assert math.isnan(m["err"])  # no non-sequence sample


def test_reference_quirks():
    m = _metrics(reference_quirks=True)
    # Puzzle 32 compares the value 13 with the answer index 3: the right answer is scored wrong.
    assert m["per_puzzle"][32]["O_acc"] == 0.0
    assert m["O_acc"] == pytest.approx(4 / 8)
    assert m["err"] == pytest.approx(0.45 / 8)  # divided by all samples, sequences included
    assert m["S_acc"] == pytest.approx(3 / 8)  # S_acc is unaffected
    # Where options are the letters A..E (value = index), both readings agree.
    case = [(44, _opts(0, 1, 2, 3, 4), 1, _row(1), _row(1))]
    for quirks in (False, True):
        out = metrics.compute_metrics(*_arrays(case), {44: 5}, skills=SKILLS, reference_quirks=quirks)
        assert out["O_acc"] == 1.0


def test_bad_input_is_reported():
    preds, labels, pids, opts, ans = _arrays(CASES)
    with pytest.raises(ValueError, match="option_values"):
        metrics.compute_metrics(preds, labels, pids, opts[:, :4], ans, NUM_CLASSES, skills=SKILLS)
    with pytest.raises(KeyError, match="32"):
        metrics.compute_metrics(preds, labels, pids, opts, ans, {2: 10, 16: 27}, skills=SKILLS)


def test_empty_split_is_nan():
    preds, labels, pids, opts, ans = _arrays(CASES)
    m = metrics.compute_metrics(
        preds, labels, pids, opts, ans, NUM_CLASSES, mask=np.zeros(len(CASES), bool), skills=SKILLS
    )
    assert m["n"] == 0 and math.isnan(m["S_acc"]) and m["per_puzzle"] == {} and m["per_skill"] == {}


def test_read_skill_types_shipped_csv():
    skills = metrics.read_skill_types()
    assert len(skills) == 101
    assert skills[1] == "path" and skills[2] == "counting"
    assert set(skills.values()) == set(puzzles.SKILL_CLASSES) | {"order"}


# Greedy baseline: training answers and an evaluation split.
TRAIN = [
    (2, _row(4)),
    (2, _row(4)),
    (2, _row(6)),
    (2, _row(6)),
    (2, _row(6)),
    (7, _row(3)),  # 7: 1 and 3 tie, the smaller (1) wins
    (7, _row(1)),
    (7, _row(3)),
    (7, _row(1)),
    (16, SEQ_A),  # 16: the most frequent whole sequence
    (16, SEQ_A),
    (16, SEQ_B),
]
TRAIN_MASKED = [(2, _row(9))] * 10  # would be the mode of puzzle 2 if padding rows were counted
EVAL = [
    (2, _opts(2, 4, 6, 8, 9), 2, _row(6)),  # greedy 6: S, O
    (2, _opts(1, 3, 5, 8, 9), 2, _row(5)),  # greedy 6: S wrong, nearest 5: O right
    (7, _opts(1, 2, 3, 0, 4), 0, _row(1)),  # greedy 1: S, O
    (16, SEQ_OPTIONS_A, 0, SEQ_A),  # greedy SEQ_A: S, O
    (5, _opts(1, 2, 3, 4, 5), 1, _row(2)),  # no training answers: predicted 0 -> nearest 1: wrong
]
GREEDY_NUM_CLASSES = {2: 10, 7: 4, 16: 27, 5: 3}


def _greedy(**kwargs):
    train = TRAIN + TRAIN_MASKED
    train_pids = np.array([p for p, _ in train])
    train_labels = np.array([r for _, r in train])
    train_mask = np.array([True] * len(TRAIN) + [False] * len(TRAIN_MASKED))
    pids, opts, ans, labels = (np.array(x) for x in zip(*EVAL, strict=True))
    return metrics.greedy_baseline(
        train_labels,
        train_pids,
        labels,
        pids,
        opts,
        ans,
        GREEDY_NUM_CLASSES,
        train_mask=train_mask,
        skills={2: "counting", 7: "math", 16: "counting", 5: "math"},
        **kwargs,
    )


def test_greedy_predictions_modes_and_ties():
    train_pids = np.array([p for p, _ in TRAIN])
    modes = metrics.greedy_predictions(np.array([r for _, r in TRAIN]), train_pids)
    assert modes[2].tolist() == _row(6)
    assert modes[7].tolist() == _row(1)
    assert modes[16].tolist() == SEQ_A


def test_greedy_and_chance_baselines():
    g = _greedy()
    assert g["greedy_S_acc"] == pytest.approx(3 / 5)
    assert g["greedy_O_acc"] == pytest.approx(4 / 5)
    assert g["greedy_missing_puzzles"] == [5]
    assert g["greedy_per_puzzle"][2] == {"S_acc": 0.5, "O_acc": 1.0, "n": 2}
    assert g["greedy_per_skill"]["math"] == {"S_acc": 0.5, "O_acc": 0.5, "num_puzzles": 2}
    # 1/C_p per ordinary sample, (1/C_p)^K for the sequence sample.
    assert g["chance_S_acc"] == pytest.approx((0.1 + 0.1 + 0.25 + 27.0**-K + 1 / 3) / 5)
    assert g["chance_O_acc"] == 0.2
    # Per skill: the mean over its puzzles of each puzzle's chance (math: puzzles 7 and 5; counting: 2, 16).
    assert g["chance_per_skill"]["math"] == {
        "S_acc": pytest.approx((1 / 4 + 1 / 3) / 2),
        "O_acc": 0.2,
        "num_puzzles": 2,
    }
    assert g["chance_per_skill"]["counting"]["S_acc"] == pytest.approx((1 / 10 + 27.0**-K) / 2)


def test_json_round_trip_and_merge(tmp_path):
    val = {**_metrics(), **_greedy()}
    path = reports.write_results(tmp_path, {"val": val})
    assert path == tmp_path / "results.json"
    reports.write_results(tmp_path, {"test": {**val, "err": float("nan"), "n": np.int64(3)}})
    text = path.read_text()

    def reject(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")

    raw = json.loads(text, parse_constant=reject)  # strict JSON: no NaN
    assert set(raw) == {"val", "test"}  # the second write merged, it did not replace
    assert "2" in raw["val"]["per_puzzle"]  # int keys stored as strings
    loaded = reports.load_results(tmp_path)
    assert loaded["val"] == val  # ints back as keys, floats exact
    assert loaded["test"]["err"] is None and loaded["test"]["n"] == 3


def test_format_table():
    table = reports.format_table({**_metrics(), **_greedy()}, skills=SKILLS)
    lines = table.splitlines()
    assert lines[0].startswith("| group | n | S_acc % | O_acc %")
    assert lines[2] == "| **all** | 8 | 37.5 | 62.5 | 60.0 | 80.0 | 0.075 |"
    assert "| counting (2 puzzles) | | 37.5 | 62.5 | 75.0 | 100.0 | |" in lines
    assert "| puzzle 32 (path) | 2 | 50.0 | 50.0 | - | - | |" in lines
    assert any(line.startswith("| uniform chance |") for line in lines)


def test_plots_are_png(tmp_path):
    paths = reports.plot_results({**_metrics(), **_greedy()}, tmp_path / "plots", prefix="val")
    assert [p.name for p in paths] == ["val_per_puzzle.png", "val_per_skill.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_order_puzzles_have_their_own_group():
    """A puzzle whose type is no skill class ("order") is in a group of its own, not dropped."""
    skills = {**SKILLS, 16: "order"}
    m = metrics.compute_metrics(*_arrays(CASES), NUM_CLASSES, skills=skills)
    assert set(m["per_skill"]) == {"counting", "path"} and m["per_skill"]["counting"]["num_puzzles"] == 1
    assert m["per_other_type"] == {"order": {"S_acc": 0.5, "O_acc": 0.5, "num_puzzles": 1}}
    grouped = sum(r["num_puzzles"] for r in (*m["per_skill"].values(), *m["per_other_type"].values()))
    assert grouped == len(m["per_puzzle"])
    table = reports.format_table(m, skills=skills).splitlines()
    assert "| order (1 puzzle, not a skill class) | | 50.0 | 50.0 | - | - | |" in table
    assert "| counting (1 puzzle) | | 25.0 | 75.0 | - | - | |" in table


def test_puzzle_rows_carry_the_data_roots_names():
    names = {2: "count the stars"}
    table = reports.format_table(_metrics(), skills=SKILLS, names=names).splitlines()
    assert "| puzzle 2 (count the stars; counting) | 4 | 25.0 | 75.0 | - | - | |" in table
    assert "| puzzle 32 (path) | 2 | 50.0 | 50.0 | - | - | |" in table


def test_curves_png(tmp_path):
    series = {
        "train/loss": {s: 2.0 - 0.01 * s for s in range(5, 101, 5)},
        "val/S_acc": {25: 0.1, 50: 0.3, 75: 0.25, 100: 0.28},
        "val/O_acc": {25: 0.2, 50: 0.35, 75: 0.3, 100: 0.33},
    }
    path = reports.plot_curves(series, steps_per_epoch=25, best_epoch=2, path=tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10000
    reports.plot_curves({}, 25, 0, tmp_path / "empty.png")  # no epoch yet: empty panels, no error


def test_summary_names_every_output_present(tmp_path):
    wd = Workdir(tmp_path)
    for path in (wd.results, wd.plot("test", "puzzle"), wd.plot("test", "skill"), wd.curves, wd.run_log()):
        path.write_text("x")
    wd.best_model.mkdir()
    results = {
        "test": {**_metrics(), **_greedy()},
        "val": {"S_acc": 0.5},
        "best_epoch": 2,
        "epochs": 3,
        "xla": {"compiled": 1, "compile_seconds": 0.9, "loaded": 13, "cache_dir": "/c/jax"},
    }
    lines = reports.format_summary(results, wd).splitlines()
    assert lines[0] == (
        "best epoch 2 of 3 (val S_acc 50.0 %); test S_acc 37.5 %, O_acc 62.5 % (greedy 60.0 %, 80.0 %)"
    )
    shown = dict(summary_line(line) for line in lines[1:])
    assert shown["results"] == str(wd.results) and shown["curves"] == str(wd.curves)
    assert shown["plots"] == f"{wd.plot('test', 'puzzle')}, {wd.plot('test', 'skill')}"
    assert "TensorBoard" not in shown  # no events written here: not listed
    assert shown["XLA"] == "1 program compiled in 0.9 s, 13 loaded from the compilation cache (/c/jax)"
    assert summary_paths("\n".join(lines)) == [
        wd.results,
        *(wd.plot("test", g) for g in ("puzzle", "skill")),
        wd.curves,
        wd.best_model,
        wd.run_log(),
    ]


def test_summary_paths_with_spaces_copy_into_a_shell(tmp_path):
    wd = Workdir(tmp_path / "my runs" / "exp 1")
    wd.tensorboard.mkdir(parents=True)
    wd.results.write_text("x")
    lines = reports.format_summary({"test": _metrics()}, wd).splitlines()
    shown = dict(summary_line(line) for line in lines[1:])
    assert shlex.split(shown["TensorBoard"]) == ["tensorboard", "--logdir", str(wd.tensorboard)]
    assert shlex.split(shown["results"]) == [str(wd.results)]
