"""Inference from checkpoints: the predictor answers exactly as the evaluation path, on real-looking inputs.

The session's short smoke training (``smoke_run``: synthetic puzzles, tiny random towers) gives a
self-describing workdir; the predictor's answers are compared with train.predict_step on the run's cached
features, and batch mode's S_acc with the run's results.json.
"""

import csv
import functools
import json
import pathlib

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from smartvlm_jax import features, inference, metrics, predict, reasoner, train
from smartvlm_jax import towers as towers_lib
from smartvlm_jax.data import smart101
from smartvlm_jax.workdir import Workdir

pytestmark = pytest.mark.slow  # every test here needs the session's trained run (a fixture)


@pytest.fixture(scope="module")
def workdir(smoke_run):
    """The session's smoke run (tests/conftest.py), which the report tests read too: only read here."""
    return smoke_run


@pytest.fixture(scope="module")
def run_config(workdir):
    return Workdir(
        workdir
    ).read_config()  # (paths inside the workdir resolved: config.json keeps them relative)


@pytest.fixture(scope="module")
def predictor(workdir):
    return inference.Predictor.load(workdir, batch_size=16)


def _test_rows(run_config):
    data_cfg = ml_collections.ConfigDict(run_config["data"])
    rows = smart101.read_rows(data_cfg.root, data_cfg.puzzle_ids)
    return smart101.split_rows(rows, "test", data_cfg, smart101.num_classes(rows))


def test_predictor_equals_evaluation_path(workdir, run_config, predictor):
    """Images -> towers -> head in the predictor == predict_step on the run's cached test features."""
    rows = _test_rows(run_config)
    out = predictor.predict(
        [r.image_path for r in rows],
        [r.question for r in rows],
        [r.options for r in rows],
        [r.puzzle_id for r in rows],
    )
    cache = features.read_recorded(workdir, "test")
    np.testing.assert_array_equal(cache["puzzle_ids"], [r.puzzle_id for r in rows])  # same row order

    vision, text = predictor.features([r.image_path for r in rows], [r.question for r in rows])
    np.testing.assert_allclose(vision, cache["vision"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(text, cache["text"], rtol=1e-5, atol=1e-5)

    model, variables, cfg = reasoner.load(workdir)
    step = jax.jit(functools.partial(train.predict_step, model=model, model_cfg=cfg))
    expected = np.asarray(step(variables["params"], cache, None))
    np.testing.assert_array_equal(out.values, expected)
    # The letter is the option O_acc scores: correct exactly where correctness says so.
    _, o_ok = metrics.correctness(
        out.values,
        cache["labels"].astype(np.int64),
        out.puzzle_ids,
        cache["option_values"].astype(np.int64),
        cache["answer_index"].astype(np.int64),
    )
    ordinary = out.num_positions == 1
    assert np.array_equal((out.option_index == cache["answer_index"])[ordinary], o_ok[ordinary])
    # Top-k: sorted probabilities of valid classes, the first one being the answer.
    assert np.all(np.diff(out.top_probs, axis=-1) <= 0) and np.all(out.top_probs <= 1)
    np.testing.assert_array_equal(out.top_values[:, :, 0][ordinary, 0], out.values[ordinary, 0])


def test_batch_mode_matches_results_json(workdir, tmp_path, capsys):
    out_csv = tmp_path / "preds.csv"
    assert (
        predict.main(["--checkpoint", str(workdir), "--split", "test", "--out", str(out_csv), "--json"]) == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads((workdir / "results.json").read_text())["test"]
    assert summary["n"] == results["n"]
    assert summary["S_acc"] == pytest.approx(results["S_acc"], abs=1e-12)
    assert summary["O_acc"] == pytest.approx(results["O_acc"], abs=1e-12)
    with open(out_csv, newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == results["n"]
    assert np.mean([int(r["s_correct"]) for r in table]) == pytest.approx(results["S_acc"])
    assert set(r["option"] for r in table) <= set("ABCDE") | {""}


def test_answers_do_not_depend_on_batching(workdir, run_config, predictor):
    rows = _test_rows(run_config)[::5]
    args = ([r.image_path for r in rows], [r.question for r in rows], None, [r.puzzle_id for r in rows])
    small = inference.Predictor.load(workdir, batch_size=3)
    a, b = predictor.predict(*args), small.predict(*args)
    np.testing.assert_array_equal(a.values, b.values)
    one = predictor.predict(args[0][:1], args[1][:1], None, np.int64(args[3][0]))  # a numpy id for all
    np.testing.assert_array_equal(one.values, a.values[:1])
    np.testing.assert_allclose(a.top_probs, b.top_probs, rtol=1e-5, atol=1e-6)


def test_model_dir_with_towers_and_quirks(workdir, run_config, tmp_path):
    """A converted-style model dir (quirks on, no run config) needs --towers; GRU answers are per example."""
    _, variables, cfg = reasoner.load(workdir)
    cfg.reference_quirks = True
    model = reasoner.build(cfg)
    inputs = reasoner.checkpoint.example_inputs(cfg)
    params = model.init(jax.random.PRNGKey(3), *inputs)["params"]
    model_dir = reasoner.save(tmp_path / "model", cfg, params)
    with pytest.raises(ValueError, match="--towers"):
        inference.Predictor.load(model_dir)
    tower_dirs = [run_config["towers"]["siglip"], run_config["towers"]["dinov2"]]  # any order
    rows = [r for r in _test_rows(run_config) if r.puzzle_id in (16, 18, 63)][:6]
    args = ([r.image_path for r in rows], [r.question for r in rows], None, [r.puzzle_id for r in rows])
    pred = inference.Predictor.load(model_dir, towers=tower_dirs, batch_size=8)
    batched = pred.predict(*args)
    # Each equals the quirky head run on that example alone (a batch of one), as the reference would.
    vision, text = pred.features(args[0], args[1])
    alone = jax.jit(lambda v, t, p: model.apply({"params": params}, v, t, p))
    for i, r in enumerate(rows):
        logits = alone(vision[i : i + 1], text[i : i + 1], np.asarray([r.puzzle_id]))
        np.testing.assert_array_equal(batched.values[i], np.argmax(np.asarray(logits)[0], axis=-1))


def test_real_inputs_rgba_odd_sizes_long_questions_word_options(predictor, tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (517, 301, 4), dtype=np.uint8)
    pixels[:40, :, 3] = 0  # a transparent band, as in the released RGBA images
    rgba = tmp_path / "odd.png"
    Image.fromarray(pixels, "RGBA").save(rgba)
    grey = tmp_path / "grey.png"
    Image.fromarray(pixels[:260, :, 0], "L").save(grey)
    long_q = "How many circles are there in the picture? " * 80
    batch = predictor.prepare([str(rgba), grey.read_bytes()], [long_q, "short"])
    for name, fn in predictor.towers.preprocessors().items():  # the pipeline's decode path, image by image
        want = np.stack([fn(smart101.load_image(rgba)), fn(smart101.load_image(grey))])
        np.testing.assert_array_equal(batch[f"image/{name}"], want)
    np.testing.assert_array_equal(batch["question_ids"][0], predictor.towers.text.tokenizer([long_q])[0])
    assert batch["question_ids"].shape == (2, 64)

    # Word options: units (puzzle 7, "cm"), icon names (puzzle 1). Put the predicted value at a known letter.
    bare = predictor.predict([str(rgba)] * 2, [long_q] * 2, None, [7, 1])
    v7, v1 = bare.answer(0), bare.answer(1)
    icons = smart101.icon_classes()
    opts7 = [f"{v7 + 100 + i} cm" for i in range(4)]
    opts7.insert(3, f"{v7} cm")
    others = [n for i, n in enumerate(icons) if abs(i - v1) > 3][:4]
    opts1 = [others[0], others[1], icons[v1].replace("_", " "), others[2], others[3]]
    out = predictor.predict([str(rgba)] * 2, [long_q] * 2, [opts7, opts1], [7, 1])
    assert out.letters == ["D", "C"]
    np.testing.assert_array_equal(out.values, bare.values)
    # One example's options None on their own: that example answers values only (issue 28, item 5).
    mixed = predictor.predict([str(rgba)] * 2, [long_q] * 2, [opts7, None], [7, 1])
    assert mixed.letters == ["D", None] and mixed.option_index.tolist() == [3, -1]
    np.testing.assert_array_equal(mixed.values, bare.values)
    with pytest.raises(ValueError, match="option B 'banana' of puzzle 7"):
        predictor.predict([str(rgba)], ["q"], [["1", "banana", "3", "4", "5"]], 7)


def test_bad_puzzle_id_and_bad_image(predictor, tmp_path, workdir, run_config, capsys, monkeypatch):
    with pytest.raises(ValueError, match=r"no decoder for puzzle ids \[50\]; it has \[1, 3, 7"):
        predictor.predict([np.zeros((300, 300, 3), np.uint8)], ["q"], None, [50])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(smart101.BadImageError, match="broken.png"):
        predictor.predict([str(bad)], ["q"], None, 7)
    # An image over the pixel limit (a decompression bomb) is a bad image naming its pixel count, in the
    # API and in the CLI (one line), under $SMARTVLM_JAX_MAX_IMAGE_PIXELS (issue 28, item 8).
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(big)
    monkeypatch.setenv("SMARTVLM_JAX_MAX_IMAGE_PIXELS", "50000")
    over = r"the image has 60,000 pixels \(300 x 200\), over the limit of 50,000"
    with pytest.raises(smart101.BadImageError, match=rf"image 0 \({big}\) cannot be read: {over}"):
        predictor.predict([str(big)], ["q"], None, 7)
    argv = ["--checkpoint", str(workdir), "--image", str(big), "--question", "q", "--puzzle-id", "7"]
    assert predict.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"error: image 0 ({big}) cannot be read: the image has 60,000 pixels")
        and "\n" not in err
    )


def test_bad_towers_name_both_sides(workdir, run_config, tmp_path):
    dinov2, siglip = run_config["towers"]["dinov2"], run_config["towers"]["siglip"]
    with pytest.raises(ValueError, match=r"missing \['siglip'\]"):
        inference.Predictor.load(workdir, towers=[dinov2])
    wide = towers_lib.tiny_config("dinov2")
    wide["hidden_size"] = 48
    wide_dir = towers_lib.create_random(tmp_path / "wide", "dinov2", wide)
    with pytest.raises(ValueError, match=r"80-d features \(dinov2 48 \+ siglip 32\).*expects vision_dim 64"):
        inference.Predictor.load(workdir, towers=[wide_dir, siglip])
    with pytest.raises(FileNotFoundError, match="nope"):
        inference.Predictor.load(workdir, towers=[str(tmp_path / "nope"), siglip])


def test_cli_one_puzzle_json_and_errors(workdir, run_config, capsys):
    row = _test_rows(run_config)[0]
    argv = [
        "--checkpoint",
        str(workdir),
        "--image",
        row.image_path,
        "--question",
        row.question,
        "--puzzle-id",
        str(row.puzzle_id),
        "--options",
        "|".join(row.options),
    ]
    assert predict.main([*argv, "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["puzzle_id"] == row.puzzle_id and record["option"] in list("ABCDE")
    assert len(record["top"]) in (1, 10) and len(record["top"][0]) == 3
    # The text names the chosen option by its letter and text, not by the head's internal value.
    text = record["option"]
    assert record["option_text"] == row.options["ABCDE".index(text)]
    assert predict.main(argv) == 0
    first = capsys.readouterr().out.strip().splitlines()[0]
    assert first.startswith(
        f"puzzle {row.puzzle_id}: option {text}: {record['option_text']!r} (predicted value"
    )
    assert predict.main(argv[:-2]) == 0
    assert "(no --options given)" in capsys.readouterr().out
    # --out into a missing folder is refused before any work, naming the folder (not a .tmp file).
    missing = pathlib.Path(workdir) / "no_such_folder"
    assert predict.main([*argv[:2], "--split", "test", "--out", str(missing / "p.csv")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: --out {missing / 'p.csv'}: the folder {missing} does not exist", err
    assert predict.main([*argv[:-2], "--options", "1|2|3"]) == 1
    assert "5 options" in capsys.readouterr().err
    assert predict.main([*argv[:6], "--puzzle-id", "99"]) == 1
    assert "no decoder for puzzle ids [99]" in capsys.readouterr().err
    assert predict.main(["--checkpoint", str(pathlib.Path(workdir) / "missing"), "--split", "test"]) == 1
