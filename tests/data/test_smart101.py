"""Reader: answer values (golden table, every rule of SPEC section 2), classes, splits, bad input."""

import csv
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from smartvlm_jax import puzzles
from smartvlm_jax.data import smart101

P16, P18, P35, P100 = (26,) * 9, (5,) * 9, (5,) * 9, (26,) * 9

# (puzzle, option text, K values). Ordinary puzzles pad positions 1..9 with ORDINARY_PAD = 0.
GOLDEN = [
    (16, "1, 2 and 3", (1, 2, 3) + (26,) * 7),
    (16, "4 and 12", (4, 12) + (26,) * 8),
    (16, "1, 2, and 3", (1, 2, 3) + (26,) * 7),  # ", ," left by "and" collapses, as the reference's replace
    (18, "3-1-2", (3, 1, 2) + (5,) * 7),
    (35, "A, C and D", (0, 2, 3) + (5,) * 7),
    (35, "B", (1,) + P35),
    (39, "ABCA", (0, 1, 2, 0) + (26,) * 6),
    (100, "ZEBRA", (25, 4, 1, 17, 0) + (26,) * 5),
    (58, "/4", (44,) + (0,) * 9),
    (58, "+2", (12,) + (0,) * 9),
    (58, "-5", (25,) + (0,) * 9),
    (58, "x3", (33,) + (0,) * 9),
    (25, "3:00 AM", (3,) + (0,) * 9),
    (25, "3:00 PM", (15,) + (0,) * 9),
    (25, "12:00 PM", (24,) + (0,) * 9),
    (2, "17", (17,) + (0,) * 9),
    (2, " 7 ", (7,) + (0,) * 9),
    (5, "C", (2,) + (0,) * 9),
    (8, "2 hours", (2,) + (0,) * 9),
    (8, "1 hour", (1,) + (0,) * 9),
    (9, "12 cm", (12,) + (0,) * 9),
    (9, "40 km", (40,) + (0,) * 9),
    (9, "Impossible", (0,) + (0,) * 9),
    (1, "ball", (2,) + (0,) * 9),
    (1, "arrow directions", (1,) + (0,) * 9),  # spaces -> "_"
    (1, "book", (7,) + (0,) * 9),  # plural: "books"
    (1, "fast train", (18,) + (0,) * 9),
]


@pytest.mark.parametrize(("pid", "text", "value"), GOLDEN)
def test_answer_value_golden(pid, text, value):
    assert tuple(smart101.answer_value(pid, text)) == value


def test_answer_value_63_pads_with_given_pad():
    assert smart101.answer_value(63, "2 or 3", pad_63=7) == [2, 3] + [7] * 8
    assert smart101.answer_value(63, "4 only", pad_63=7) == [4] + [7] * 9
    assert smart101.answer_value(63, "1, 2 and 5", pad_63=7) == [1, 2, 5] + [7] * 7


@pytest.mark.parametrize(
    ("pid", "text"), [(2, "many"), (58, "?3"), (1, "spaceship"), (18, "1-2-3-4-1-2-3-4-1-2-3")]
)
def test_answer_value_rejects(pid, text):
    with pytest.raises(ValueError):
        smart101.answer_value(pid, text)


def _write_csv(folder, name, rows, header=("id", "Question", "image", "A", "B", "C", "D", "E", "Answer")):
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    with open(os.path.join(folder, name), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    for r in rows:
        if len(r) > 2:
            Image.new("RGBA", (300, 200), (0, 0, 0, 0)).save(os.path.join(folder, "img", r[2]))


def test_read_puzzle_rules_and_classes(tmp_path):
    root = str(tmp_path)
    _write_csv(
        os.path.join(root, "63"),
        "puzzle_63.csv",
        [
            [1, "q?", "a.png", "1 and 2", "3 only", "2 or 5", "1", "4", "C "],
            [2, "q", "b.png", "1", "2", "3", "4", "6", "A"],
        ],
    )
    _write_csv(
        os.path.join(root, "5"), "puzzle_5.csv", [[7, "Which, exactly?", "c.png", "", "", "", "", "", "D"]]
    )
    rows = smart101.read_rows(root, "all")
    assert [r.puzzle_id for r in rows] == [5, 63, 63]
    r5 = rows[0]
    assert r5.options == ("A", "B", "C", "D", "E") and r5.label[0] == 3 and r5.answer_index == 3
    assert r5.question == "Which, exactly?" and r5.instance_id == 7 and r5.row_index == 0
    # C_63 = max list entry over the answers (5 from "2 or 5", 1 from "1") + 1 = 6 -> pad 5.
    assert smart101.num_classes(rows) == {5: 4, 63: 6}
    assert rows[1].label == (2, 5) + (5,) * 8 and rows[1].answer_letter == "C"
    assert rows[1].option_values[4] == (4,) + (5,) * 9
    assert rows[2].label == (1,) + (5,) * 9


def test_num_classes_fixed_sequence_puzzles(synthetic_root):
    classes = smart101.num_classes(smart101.read_rows(synthetic_root))
    assert classes[16] == 27 and classes[39] == 27 and classes[18] == 6 and classes[35] == 6
    assert classes[25] == 1 + max(r.label[0] for r in smart101.read_puzzle(synthetic_root, 25))


def test_misnamed_puzzle_62_csv_is_accepted(tmp_path):
    _write_csv(
        os.path.join(tmp_path, "62"), "puzzle_63.csv", [[1, "q", "a.png", "1", "2", "3", "4", "5", "B"]]
    )
    (row,) = smart101.read_puzzle(str(tmp_path), 62)
    assert row.puzzle_id == 62 and row.label[0] == 2


def test_missing_puzzle_folder_lists_found_ids(synthetic_root):
    with pytest.raises(FileNotFoundError, match=r"puzzle ids found under .*\[1, 3, 7, 16"):
        smart101.read_rows(synthetic_root, [3, 4])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([1, "q", "a.png", "1", "2", "3", "4", "5", "F"], r"puzzle_2.csv:3: answer 'F' is not one of A-E"),
        ([1, "q", "a.png", "1", "2", "lots", "4", "5", "A"], r"puzzle_2.csv:3: option C 'lots' has no value"),
        ([1, "q", "a.png", "1", "2"], r"puzzle_2.csv:3: wrong number of fields"),
        (["x", "q", "a.png", "1", "2", "3", "4", "5", "A"], r"puzzle_2.csv:3: id 'x'"),
    ],
)
def test_malformed_row_names_path_line_and_text(tmp_path, row, message):
    good = [0, "q", "a.png", "1", "2", "3", "4", "5", "A"]
    _write_csv(os.path.join(tmp_path, "2"), "puzzle_2.csv", [good, row])
    with pytest.raises(smart101.MalformedRowError, match=message):
        smart101.read_puzzle(str(tmp_path), 2)


def test_missing_column_is_malformed(tmp_path):
    _write_csv(
        os.path.join(tmp_path, "2"),
        "puzzle_2.csv",
        [[1, "q", "a.png", "1"]],
        header=("id", "Question", "image", "A"),
    )
    with pytest.raises(smart101.MalformedRowError, match=r"puzzle_2.csv:1: missing columns"):
        smart101.read_puzzle(str(tmp_path), 2)


def test_bad_images_raise_or_are_skipped(synthetic_root, tmp_path, caplog):
    root = str(tmp_path / "copy")
    shutil.copytree(os.path.join(synthetic_root, "3"), os.path.join(root, "3"))
    rows = smart101.read_puzzle(root, 3)
    os.remove(rows[2].image_path)
    with open(rows[5].image_path, "wb") as f:
        f.write(b"not a png")
    # named as a malformed row is, by the CSV's line (the header is line 1): data row 2 is line 4
    with pytest.raises(smart101.BadImageError, match=r"3/puzzle_3.csv:4 \(id 3\): image .*puzzle_3_e_3.png"):
        smart101.drop_bad_images(rows, skip_bad_rows=False)
    good, skipped = smart101.drop_bad_images(rows, skip_bad_rows=True)
    assert len(good) == len(rows) - 2 and len(skipped) == 2
    assert "puzzle_3.csv:7 (id 6)" in skipped[1] and "skipped 2 of 20 rows" in caplog.text


def test_load_image_shorter_side_224_rgb(synthetic_root):
    for row in smart101.read_puzzle(synthetic_root, 25)[:5]:
        im = smart101.load_image(row.image_path)
        with Image.open(row.image_path) as src:
            w, h = src.size
        assert im.mode == "RGB" and min(im.size) == 224
        long = int(224 * max(w, h) / min(w, h))
        assert max(im.size) == long


def test_skill_types():
    skills = smart101.skill_types()
    assert len(skills) == 101 and skills[1] == "path" and skills[2] == "counting"
    assert set(skills.values()) >= set(puzzles.SKILL_CLASSES)


def _cfg(**kw):
    cfg = smart101.default_data_config()
    cfg.update(kw)
    return cfg


def _floor_ceil(n, pct):
    return int(np.floor(n * pct / 100.0)), int(np.ceil(n * pct / 100.0))


@pytest.mark.parametrize(("data_tot", "ratio"), [(1000, (60, 20, 20)), (13, (60, 20, 20)), (7, (70, 15, 15))])
def test_instance_split_sizes_match_spec(synthetic_root, data_tot, ratio):
    rows = smart101.read_rows(synthetic_root)
    cfg = _cfg(data_tot=data_tot, ratio=ratio)
    parts = {s: smart101.split_rows(rows, s, cfg) for s in ("train", "val", "test")}
    n = min(20, data_tot)
    a, b = ratio[0], ratio[0] + ratio[1]
    sizes = {
        "train": _floor_ceil(n, a)[0],
        "val": _floor_ceil(n, b)[0] - _floor_ceil(n, a)[1],
        "test": n - _floor_ceil(n, b)[1],
    }
    for split, part in parts.items():
        per_puzzle = {p: sum(r.puzzle_id == p for r in part) for p in range(1, 102)}
        assert all(per_puzzle[p] == sizes[split] for p in (1, 3, 63, 94)), split
        # Row order inside the puzzle: train first rows, test last.
    train_rows = {(r.puzzle_id, r.row_index) for r in parts["train"]}
    test_rows = {(r.puzzle_id, r.row_index) for r in parts["test"]}
    assert (3, 0) in train_rows and (3, n - 1) in test_rows and not train_rows & test_rows


def test_puzzle_and_fewshot_splits(synthetic_root):
    rows = smart101.read_rows(synthetic_root)
    zs = {s: smart101.split_rows(rows, s, _cfg(split_type="puzzle")) for s in ("train", "val", "test")}
    assert {r.puzzle_id for r in zs["val"]} == {7} and {r.puzzle_id for r in zs["test"]} == {94}
    assert 7 not in {r.puzzle_id for r in zs["train"]} and 94 not in {r.puzzle_id for r in zs["train"]}
    assert (
        len(zs["val"]) == 4 and len(zs["test"]) == 4
    )  # the ratio applies inside the puzzle, as the reference
    fs = {
        s: smart101.split_rows(rows, s, _cfg(split_type="fewshot", fs_k=10)) for s in ("train", "val", "test")
    }
    held_train = [r.row_index for r in fs["train"] if r.puzzle_id == 7]
    assert held_train == list(range(6))  # floor(0.6 * fs_k)
    assert [r.row_index for r in fs["val"]] == [16, 17]  # rows [10, 20): ratio val part [16, 18)
    assert [r.row_index for r in fs["test"]] == [18, 19]


def test_answer_split_holds_out_one_answer(synthetic_root):
    rows = smart101.read_rows(synthetic_root)
    cfg = _cfg(split_type="answer")
    parts = {s: smart101.split_rows(rows, s, cfg) for s in ("train", "val", "test")}
    for pid in (3, 7, 94):
        test_answers = {r.label[0] for r in parts["test"] if r.puzzle_id == pid}
        train_answers = {r.label[0] for r in parts["train"] + parts["val"] if r.puzzle_id == pid}
        assert len(test_answers) == 1 and not test_answers & train_answers
        n = sum(r.puzzle_id == pid for r in rows) - sum(r.puzzle_id == pid for r in parts["test"])
        assert sum(r.puzzle_id == pid for r in parts["train"]) == n * 80 // 100
    # Sequence puzzles and 58 fall back to the instance split.
    assert (
        sum(r.puzzle_id == 16 for r in parts["test"]) == 4
        and sum(r.puzzle_id == 58 for r in parts["test"]) == 4
    )
