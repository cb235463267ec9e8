"""Synthetic data for all 101 puzzles (`--puzzles all`): the reference's reader reads every row as ours does,
no surrounding whitespace, the release layout with 62/puzzle_63.csv, every split type non-empty, root
formats, pictures that draw the answer, identical files for any worker count."""

import filecmp
import os
import re

import pytest

from smartvlm_jax import puzzles
from smartvlm_jax.data import smart101, synthetic
from tests.support import reference_reader as ref
from tests.support.data import count_blobs, is_blue, is_red

PER_PUZZLE = 6


@pytest.fixture(scope="module")
def all_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("smart101_all"))
    assert synthetic.write_dataset(root, PER_PUZZLE, seed=0, puzzle_ids="all") == list(range(1, 102))
    return root


@pytest.fixture(scope="module")
def all_rows(all_root):
    return smart101.read_rows(all_root, "all")


def test_release_layout(all_root, all_rows):
    assert smart101.found_puzzle_ids(all_root) == list(range(1, 102))
    # The release's defect: folder 62 holds puzzle_63.csv.
    assert sorted(os.listdir(os.path.join(all_root, "62"))) == ["img", "puzzle_63.csv"]
    assert len(all_rows) == 101 * PER_PUZZLE
    assert all(os.path.exists(r.image_path) for r in all_rows)


def test_reference_reader_reads_every_row_as_ours(all_root, all_rows):
    paths = {pid: smart101.puzzle_csv_path(all_root, pid) for pid in puzzles.ALL_PUZZLE_IDS}
    ref_classes = ref.get_puzzle_class_info(paths)
    assert ref_classes == smart101.num_classes(all_rows)
    ours = {(r.puzzle_id, r.row_index): r for r in all_rows}
    for pid, path in paths.items():
        for i, qa in enumerate(ref.read_csv(path, pid)):
            row = ours[(pid, i)]
            fields = [qa[c] for c in ("id", "Answer", "A", "B", "C", "D", "E")]
            assert all(f == f.strip() for f in fields), (pid, i, fields)
            for letter, value in zip(smart101.OPTION_LETTERS, row.option_values, strict=True):
                got = ref.get_val(qa, letter, num_classes_63=ref_classes[63])
                assert (list(value) if puzzles.is_sequence(pid) else value[0]) == got, (pid, i, letter)
            assert row.label == row.option_values["ABCDE".index(qa["Answer"])]


def test_num_classes_are_sensible(all_rows):
    classes = smart101.num_classes(all_rows)
    assert sorted(classes) == list(range(1, 102))
    for row in all_rows:
        k = puzzles.NUM_DECODE_STEPS if puzzles.is_sequence(row.puzzle_id) else 1
        assert all(0 <= v < classes[row.puzzle_id] for v in row.label[:k])
        assert len(set(row.option_values)) == 5 or row.puzzle_id == 63  # distinct option values
    assert all(2 <= c <= synthetic.MAX_DRAWN_VALUE + 1 for c in classes.values())


@pytest.mark.parametrize("split_type", ["instance", "puzzle", "fewshot", "answer"])
def test_every_split_type_has_rows(all_rows, split_type):
    cfg = smart101.default_data_config()
    # 60:20:20 of 6 rows leaves val empty (ceil(3.6) = 4 = floor(4.8)); 50:25:25 gives 3:1:1.
    cfg.split_type, cfg.ratio, cfg.fs_k = split_type, (50, 25, 25), 2
    classes = smart101.num_classes(all_rows)
    split_ids = {}
    for split in ("train", "val", "test"):
        rows = smart101.split_rows(all_rows, split, cfg, classes)
        assert rows, split
        split_ids[split] = {r.puzzle_id for r in rows}
    if split_type == "puzzle":
        held_out = set(puzzles.PUZZLE_SPLIT_VAL) | set(puzzles.PUZZLE_SPLIT_TEST)
        assert split_ids["val"] == {7, 43, 64}
        assert split_ids["test"] == set(puzzles.PUZZLE_SPLIT_TEST) and len(split_ids["test"]) == 21
        assert split_ids["train"] == set(range(1, 102)) - held_out


def test_root_formats(all_rows):
    """Options follow their root's format; exactly the roots that the reference cannot encode are replaced."""
    unencodable = set()
    for pid, root in synthetic.roots().items():
        try:
            qinfo = {"puzzle_id": pid, **dict(zip("ABCDE", root.options, strict=True))}
            [ref.get_val(qinfo, c) for c in "ABCDE"]
        except (ValueError, TypeError):
            unencodable.add(pid)
    assert unencodable == set(synthetic.NEAREST_FORMAT) | {1, 25, 63}  # those three are families
    patterns = {
        synthetic.NUMBER: r"\d+",
        synthetic.NUMBER_OR_IMPOSSIBLE: r"\d+|Impossible",
        synthetic.LETTERS_FORMAT: r"[A-Z]",
        synthetic.WORD: r"[A-Z]{4}",
    }
    for row in all_rows:
        if row.puzzle_id in synthetic.FAMILIES:
            continue
        kind, unit = synthetic.root_format(row.puzzle_id)
        if kind == synthetic.LETTER:
            assert row.options == smart101.OPTION_LETTERS
            continue
        pattern = rf"\d+{unit}|1{unit.rstrip('s')}" if kind == synthetic.UNIT else patterns[kind]
        assert all(re.fullmatch(pattern, o) for o in row.options), (row.puzzle_id, row.options)
    # Questions are the root's with numbers varied: same words.
    for row in all_rows[::PER_PUZZLE]:
        if row.puzzle_id not in synthetic.FAMILIES:
            words = lambda q: re.sub(r"\d+", "#", q)
            assert words(row.question) == words(synthetic.roots()[row.puzzle_id].question)


def test_pictures_draw_the_answer(all_rows):
    """Non-family pictures: tens as blue squares, units as red discs (puzzle 100: colour-coded letters)."""
    checked = 0
    for row in all_rows[::PER_PUZZLE]:
        if row.puzzle_id in synthetic.FAMILIES or puzzles.is_sequence(row.puzzle_id):
            continue
        tens, units = divmod(row.label[0], 10)
        assert (count_blobs(row.image_path, is_blue), count_blobs(row.image_path, is_red)) == (tens, units)
        checked += 1
    assert checked == 101 - len(synthetic.FAMILIES) - 1  # all but the families and 100


def test_same_files_for_any_worker_count(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    ids = [1, 21, 62, 100]
    synthetic.write_dataset(one, 3, seed=1, puzzle_ids=ids, workers=1)
    synthetic.write_dataset(two, 3, seed=1, puzzle_ids=ids, workers=2)
    for pid in map(str, ids):
        cmp = filecmp.dircmp(os.path.join(one, pid), os.path.join(two, pid))
        assert not cmp.left_only and not cmp.right_only
        names = [n for n in os.listdir(os.path.join(one, pid)) if n != "img"]
        names += [os.path.join("img", n) for n in os.listdir(os.path.join(one, pid, "img"))]
        match, mismatch, errors = filecmp.cmpfiles(
            os.path.join(one, pid), os.path.join(two, pid), names, shallow=False
        )
        assert not mismatch and not errors and len(match) == 4


def test_unknown_puzzle_ids_raise(tmp_path):
    with pytest.raises(ValueError, match="1..101"):
        synthetic.write_dataset(str(tmp_path), 1, seed=0, puzzle_ids=[0, 5])


def test_cli(tmp_path, capsys):
    synthetic.main(["--out", str(tmp_path), "--per-puzzle", "1", "--puzzles", "2", "62", "--workers", "1"])
    assert smart101.found_puzzle_ids(str(tmp_path)) == [2, 62]
    assert "puzzles [2, 62]" in capsys.readouterr().out
    # Errors are one line naming the flag (issue 28): "all" with ids, an id outside 1..101.
    assert synthetic.main(["--out", str(tmp_path), "--puzzles", "all", "3"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: --puzzles takes all or puzzle ids separated by commas (1,2,3), not 'all,3'"
    )
    assert synthetic.main(["--out", str(tmp_path / "x"), "--puzzles", "2", "200"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: --puzzles: no synthetic puzzle for ids [200]: ids are 1..101 (families: "
        f"{sorted(synthetic.FAMILIES)})"
    )
    assert not (tmp_path / "x").exists()
    # The separator of the other commands' --puzzles: commas.
    assert synthetic.main(["--out", str(tmp_path / "y"), "--per-puzzle", "1", "--puzzles", "3,7"]) == 0
    assert smart101.found_puzzle_ids(str(tmp_path / "y")) == [3, 7]
