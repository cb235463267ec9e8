"""Synthetic puzzles: release layout, determinism, every answer-value rule, pictures that carry the answer."""

import csv
import filecmp
import os

import numpy as np
from PIL import Image

from smartvlm_jax import puzzles
from smartvlm_jax.data import smart101, synthetic
from tests.support.data import count_blobs, is_blue


def test_layout_matches_release(synthetic_root):
    ids = smart101.found_puzzle_ids(synthetic_root)
    assert len(ids) >= 8
    # Every answer-value rule: icon names, clock, sign-digit, all sequence formats but 100, numeric, letters.
    assert {1, 25, 58, 16, 18, 35, 39, 63} <= set(ids)
    with open(os.path.join(synthetic_root, "3", "puzzle_3.csv"), newline="") as f:
        header = next(csv.reader(f))
    assert header[:9] == ["id", "Question", "image", "A", "B", "C", "D", "E", "Answer"]
    raw = open(os.path.join(synthetic_root, "3", "puzzle_3.csv")).read()
    assert '"In the picture, how many circles are there?"' in raw  # commas quoted as in the release
    modes, sizes = set(), set()
    for name in sorted(os.listdir(os.path.join(synthetic_root, "3", "img"))):
        with Image.open(os.path.join(synthetic_root, "3", "img", name)) as im:
            modes.add(im.mode)
            sizes.add(im.size)
    assert modes == {"RGB", "RGBA"} and len(sizes) > 5
    rows = smart101.read_rows(synthetic_root)
    assert any(r.options == smart101.OPTION_LETTERS for r in rows)  # empty option columns
    assert any("Impossible" in r.options for r in rows)
    assert all(len(set(r.option_values)) == 5 for r in rows if r.puzzle_id != 63)  # distinct options


def test_deterministic_for_a_seed(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    for out, seed in ((a, 3), (b, 3), (c, 4)):
        synthetic.write_dataset(out, 4, seed, puzzle_ids=[25, 63])
    for pid in ("25", "63"):
        cmp = filecmp.dircmp(os.path.join(a, pid, "img"), os.path.join(b, pid, "img"))
        assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
        assert filecmp.cmp(
            os.path.join(a, pid, f"puzzle_{pid}.csv"), os.path.join(b, pid, f"puzzle_{pid}.csv"), False
        )
    assert not filecmp.cmp(
        os.path.join(a, "25", "puzzle_25.csv"), os.path.join(c, "25", "puzzle_25.csv"), False
    )


def test_picture_determines_the_answer(synthetic_root):
    for row in smart101.read_puzzle(synthetic_root, 3)[:6]:
        assert count_blobs(row.image_path, is_blue) == row.label[0]
    for row in smart101.read_puzzle(synthetic_root, 25):
        dark = np.asarray(smart101.load_image(row.image_path))[2, 2].mean() < 100  # corner = sky
        assert dark == (row.label[0] > 12)


def test_sequence_labels_fit_their_classes(synthetic_root):
    rows = smart101.read_rows(synthetic_root)
    classes = smart101.num_classes(rows)
    for r in rows:
        k = puzzles.NUM_DECODE_STEPS if puzzles.is_sequence(r.puzzle_id) else 1
        assert all(0 <= v < classes[r.puzzle_id] for v in r.label[:k])


def test_families_name_themselves_and_their_stand_in_skill(synthetic_root, tmp_path):
    """The synthetic root's puzzle_info.csv names each family and its stand-in skill; the reports read it
    instead of the release's metadata (puzzle 1 is a path puzzle there, 18 an "order" one)."""
    assert set(synthetic.FAMILY_INFO) == set(synthetic.FAMILIES)
    assert {skill for _, skill in synthetic.FAMILY_INFO.values()} <= set(puzzles.SKILL_CLASSES)
    info = smart101.read_puzzle_info(synthetic_root)
    assert info[1] == smart101.PuzzleInfo("spatial", "which icon is drawn")
    assert info[18] == smart101.PuzzleInfo("measure", "bar heights, left to right")
    assert info[2] == smart101.PuzzleInfo("counting")  # not written here: the release's type, no name
    release = smart101.read_puzzle_info(tmp_path)  # a root without its own file: the release's types
    assert release[1] == smart101.PuzzleInfo("path") and release[18] == smart101.PuzzleInfo("order")
    synthetic.write_dataset(str(tmp_path / "roots"), 1, seed=0, puzzle_ids=[2, 18])
    root_puzzle = smart101.read_puzzle_info(tmp_path / "roots")[2]
    assert root_puzzle == smart101.PuzzleInfo("counting", "root 2, value drawn")
