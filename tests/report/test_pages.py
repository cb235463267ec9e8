"""The report pages without a browser: sequence error positions and the gallery's sample on hand-made
arrays; on a smoke run, the predictions file against results.json, its reuse, a run without stored
features, the command line."""

import json
import shlex
import shutil

import markupsafe
import numpy as np
import pytest

from smartvlm_jax import metrics, puzzles, reports
from smartvlm_jax.report import __main__ as cli
from smartvlm_jax.report import pages
from smartvlm_jax.report import predictions as predictions_lib

K = puzzles.NUM_DECODE_STEPS


def test_sequence_errors_name_each_positions_accuracy_and_the_first_wrong_one():
    pad = 26  # puzzle 16's padding
    label = [1, 2, 3] + [pad] * (K - 3)
    preds = [label, [1, 9, 3] + [pad] * (K - 3), [1, 2, 3, 4] + [pad] * (K - 4), [0, 0, 3] + [pad] * (K - 3)]
    option = np.full((5, K), pad)
    pred = {
        "puzzle_ids": np.full(4, 16),
        "labels": np.array([label] * 4),
        "preds": np.array(preds),
        "option_values": np.array([option] * 4),
    }
    (row,) = pages.sequence_errors(pred)
    assert row["puzzle"] == 16 and row["n"] == 4 and row["length"] == 3 and row["wrong"] == 3
    assert row["exact"] == 0.25
    assert row["position_acc"] == [0.75, 0.5, 1.0]
    assert row["first_wrong"] == [1, 1, 0]  # [0, 0, 3]: position 1; [1, 9, 3]: position 2
    assert row["first_wrong_after"] == 1  # [1, 2, 3, 4]: right values, a 4 where the padding is


def test_a_pad_valued_answer_value_counts_at_its_position():
    """Puzzle 63 pads with C_63 - 1, also a real count: "9 and 4" starts with the pad value. A row exactly
    right is right at every position (the trial's page showed position 1 at 0 % beside 16.7 % exact)."""
    pad = 9
    labels = [[9, 4] + [pad] * (K - 2), [2] + [pad] * (K - 1)]
    preds = [labels[0], [3] + [pad] * (K - 1)]
    pred = {
        "puzzle_ids": np.full(2, 63),
        "labels": np.array(labels),
        "preds": np.array(preds),
        "option_values": np.full((2, 5, K), pad),
    }
    (row,) = pages.sequence_errors(pred)
    assert row["length"] == 2 and row["exact"] == 0.5
    assert row["position_acc"] == [0.5, 1.0]  # each at least the exact-match accuracy
    assert row["first_wrong"] == [1, 0]


def test_the_gallery_samples_every_puzzle_alike_beyond_its_size():
    pids = np.repeat([1, 2, 3], [50, 10, 40])
    assert np.array_equal(pages.gallery_sample(pids, 100), np.arange(100))
    chosen = pages.gallery_sample(pids, 30)
    assert np.array_equal(np.bincount(pids[chosen])[1:], [10, 10, 10])
    assert np.array_equal(chosen, np.sort(chosen)) and np.array_equal(chosen, pages.gallery_sample(pids, 30))


@pytest.mark.slow
def test_predictions_reproduce_results_json_and_are_reused(smoke_run):
    pred = predictions_lib.load(smoke_run / "test_predictions.npz")
    test = reports.load_results(smoke_run)["test"]
    n = len(pred["puzzle_ids"])
    assert n == test["n"] == 88
    assert pred["top_probs"].shape == (n, K, predictions_lib.TOP_K)
    assert np.all(np.diff(pred["top_probs"], axis=-1) <= 0)  # most probable first
    ordinary = ~np.isin(pred["puzzle_ids"], list(puzzles.SEQUENCE_PUZZLES))
    assert np.array_equal(pred["top_values"][ordinary, 0, 0], pred["preds"][ordinary, 0])
    num_classes = {int(p): 1000 for p in pred["puzzle_ids"]}  # err is not compared
    again = metrics.compute_metrics(
        pred["preds"],
        pred["labels"],
        pred["puzzle_ids"],
        pred["option_values"],
        pred["answer_index"],
        num_classes,
    )
    assert again["S_acc"] == test["S_acc"] and again["O_acc"] == test["O_acc"]
    assert pred["s_correct"].mean() == test["S_acc"] and pred["o_correct"].mean() == test["O_acc"]
    stamp = (smoke_run / "test_predictions.npz").stat().st_mtime_ns
    pages.write_run_page(smoke_run)  # the page again: the predictions are read, not computed
    assert (smoke_run / "test_predictions.npz").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_a_run_without_stored_features_gets_a_page_without_gallery(smoke_run, tmp_path):
    bare = tmp_path / "bare run ü"  # also: the footer's command copies into a shell, "ü" shows as itself
    bare.mkdir()
    for name in ("results.json", "log.jsonl", "curves.png"):
        shutil.copy(smoke_run / name, bare / name)
    config = json.loads((smoke_run / "config.json").read_text())
    config["data"]["data_dir"] = "/data/Müller/tfds"
    (bare / "config.json").write_text(json.dumps(config))
    shutil.copytree(smoke_run / "best_model", bare / "best_model")
    html = pages.write_run_page(bare).read_text()
    assert f"--workdir {markupsafe.escape(shlex.quote(str(bare)))}</code>" in html
    assert "Müller" in html and "\\u00fc" not in html
    assert "no gallery" in html and 'id="no-gallery"' in html and 'id="cards-data"' not in html
    assert not (bare / "test_predictions.npz").exists()
    s_acc = reports.pct(json.loads((bare / "results.json").read_text())["test"]["S_acc"])
    assert f'id="s-acc">{s_acc}<' in html


@pytest.mark.slow
def test_the_towers_line_reads_the_variant_of_an_older_config(smoke_run, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(smoke_run / "results.json", old / "results.json")
    shutil.copytree(smoke_run / "best_model", old / "best_model")
    config = json.loads((smoke_run / "config.json").read_text())
    variant = config["model"]["variant"]
    config["model"]["features"] = config["model"].pop("variant")  # as written before the rename
    (old / "config.json").write_text(json.dumps(config))
    assert pages.run_context(old, draw_plots=False)["towers"]["variant"] == variant
    assert pages.run_context(smoke_run, draw_plots=False)["towers"]["variant"] == variant


def test_the_command_refuses_a_folder_that_is_no_workdir(tmp_path, capsys):
    assert cli.main(["--workdir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(tmp_path) in err and "\n" not in err


def test_the_config_table_shows_derived_fields_as_derived():
    """A config leaves the head's puzzles, C_p and tower widths empty (setup fills them in from the data and
    towers): the base column must not read "vision_dim 0" for the paper's model."""
    from configs import smarter

    run = json.loads(smarter.get_config().to_json_best_effort())
    run["model"].update(vision_dim=768, text_dim=768, puzzle_ids=[1, 2], num_classes=[5, 7])
    _, rows = pages.config_difference(run)
    derived = {field: base for field, _, base in rows if field in pages.DERIVED_FIELDS}
    assert derived == dict.fromkeys(pages.DERIVED_FIELDS, "(from the data and towers)")
    assert ("model.vision_dim", "768", "(from the data and towers)") in rows
