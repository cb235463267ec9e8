"""The main job on SMART-101-shaped data: all 101 puzzles (6 synthetic instances each), once per split type.

Checks which puzzles each split type puts in val and test, that every puzzle of an evaluated split gets a
result, and that the whole job (dataset build, tiny towers, feature cache, training, evaluation, report)
holds when 101 per-puzzle heads, every answer format and the 21 held-out puzzles meet at once.
"""

from __future__ import annotations

import pytest

from configs import smoke
from smartvlm_jax import puzzles, reports, train
from smartvlm_jax.data import smart101, synthetic

PER_PUZZLE = 6


# The four runs compile the same head, towers and shapes: XLA's persistent compilation cache, on by
# default (the session's directory, tests/conftest.py), compiles them once.


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """101 x 6 synthetic puzzles and their TFDS build (shared by the four runs: one build serves all)."""
    base = tmp_path_factory.mktemp("smart101")
    synthetic.write_dataset(str(base / "root"), per_puzzle=PER_PUZZLE, seed=0, puzzle_ids="all")
    return base / "root", base / "tfds"


def run_config(root, data_dir, split_type: str):
    config = smoke.get_config()
    config.update_from_flattened_dict(
        {
            "synthetic.enabled": False,
            "data.root": str(root),
            "data.data_dir": str(data_dir),
            "data.split_type": split_type,
            "data.data_tot": PER_PUZZLE,
            "data.fs_k": 2,
            # 60:20:20 of 6 rows leaves val empty (ceil(3.6) = 4 = floor(4.8)); 50:25:25 gives 3:1:1 a puzzle
            "data.ratio": (50, 25, 25),
            "num_epochs": 1,
            "batch_size": 32,
            "eval_batch_size": 64,
            "checkpoint_every_steps": 1000,
            "log_every_steps": 5,
        }
    )
    return config


@pytest.mark.parametrize("split_type", ["instance", "puzzle", "fewshot", "answer"])
@pytest.mark.slow
def test_main_job_on_all_101_puzzles(data, tmp_path, split_type):
    root, data_dir = data
    config = run_config(root, data_dir, split_type)
    results = train.train_and_evaluate(config, tmp_path)
    rows = smart101.read_rows(root)
    classes = smart101.num_classes(rows)
    expected = {
        s: {r.puzzle_id for r in smart101.split_rows(rows, s, config.data, classes)} for s in ("val", "test")
    }
    if split_type in ("puzzle", "fewshot"):  # the held-out puzzles of SPEC section 3, no others
        assert expected["val"] == set(puzzles.PUZZLE_SPLIT_VAL)
        assert expected["test"] == set(puzzles.PUZZLE_SPLIT_TEST) and len(expected["test"]) == 21
    elif split_type == "instance":
        assert expected["val"] == expected["test"] == set(puzzles.ALL_PUZZLE_IDS)
    else:  # answer: the puzzles where some of the 6 rows carry the held-out answer, and the fallbacks
        assert set(puzzles.SEQUENCE_PUZZLES) | {58} <= expected["test"] <= set(puzzles.ALL_PUZZLE_IDS)
    saved = reports.load_results(tmp_path)
    assert saved["test"]["S_acc"] == results["test"]["S_acc"]
    for split in ("val", "test"):
        per_puzzle = saved[split]["per_puzzle"]
        assert set(per_puzzle) == expected[split], split  # every puzzle present gets a result, no other
        for pid, m in per_puzzle.items():
            assert 0 <= m["S_acc"] <= 1 and 0 <= m["O_acc"] <= 1 and m["n"] >= 1, (split, pid, m)
        assert sum(m["n"] for m in per_puzzle.values()) == saved[split]["n"]
    test = saved["test"]
    # the types the synthetic root describes (its puzzle_info.csv): families' stand-ins, roots' own types
    types = {smart101.read_puzzle_info(root)[p].type for p in expected["test"]}
    assert set(test["per_skill"]) == types & set(puzzles.SKILL_CLASSES)
    assert set(test["per_other_type"]) == types - set(puzzles.SKILL_CLASSES)  # "order": grouped, not dropped
    grouped = [*test["per_skill"].values(), *test["per_other_type"].values()]
    assert sum(g["num_puzzles"] for g in grouped) == len(expected["test"])
    assert {"greedy_S_acc", "chance_S_acc"} <= set(test)
    assert (tmp_path / "test_per_puzzle.png").stat().st_size > 0
    assert results["steps"] >= 1


def test_split_puzzles_are_logged_as_ranges():
    assert train.id_ranges(puzzles.PUZZLE_SPLIT_TEST) == "61-62, 65-67, 69-77, 94-99, 101"
    assert train.id_ranges([]) == "" and train.id_ranges([5]) == "5"
