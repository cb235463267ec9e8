"""The SMART baseline through the trainer: recipe, tiny end-to-end runs (towers in the step and cached),
model dirs, and config errors.

Runs use synthetic puzzles (11 puzzles x 10 instances), tiny random ResNet + BERT towers and one epoch.
"""

import json
import pathlib

import jax
import ml_collections
import numpy as np
import optax
import pytest
from PIL import Image

from configs import baseline as baseline_config
from smartvlm_jax import features, inference, metrics, optim, predict, reasoner, reports, train, variants
from smartvlm_jax.data import smart101
from smartvlm_jax.reasoner import baseline, checkpoint
from smartvlm_jax.reasoner import config as config_lib
from smartvlm_jax.workdir import Workdir
from tests.support.runs import baseline_run_config as run_config


def losses(workdir: pathlib.Path) -> list[float]:
    records = [json.loads(line) for line in (workdir / "log.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in records if "train/loss" in r]


def test_recipe_is_the_smart_baselines():
    c = baseline_config.get_config()
    assert (c.model.head, c.model.variant, c.model.use_qf) == ("baseline", "resnet", False)
    assert (c.model.repr_size, c.model.h_sz, c.model.max_qlen) == (128, 256, 110)
    assert (c.optim.name, c.optim.b1, c.optim.b2, c.optim.grad_clip, c.optim.schedule) == (
        "adam",
        0.9,
        0.99,
        0.0,
        "constant",
    )
    assert not c.cache_features
    assert variants.get(c.model.variant).towers == ("resnet", "bert")
    # Plain Adam at a constant lr, unclipped: the same updates as optax.adam over steps of varied gradients.
    tx, plain = optim.make_optimizer(c.optim, total_steps=100), optax.adam(c.optim.lr, b1=0.9, b2=0.99)
    params = {"w": np.zeros(3, np.float32)}
    state, plain_state = tx.init(params), plain.init(params)
    for g in (np.array([50.0, -3.0, 0.5]), np.array([0.01, 2.0, -0.2]), np.array([7.0, 7.0, 7.0])):
        grads = {"w": g.astype(np.float32)}
        updates, state = tx.update(grads, state, params)
        expected, plain_state = plain.update(grads, plain_state, params)
        np.testing.assert_allclose(np.asarray(updates["w"]), np.asarray(expected["w"]), rtol=1e-6)
    assert float(optim.learning_rate_schedule(c.optim, 100)(99)) == pytest.approx(c.optim.lr)


def test_example_inputs_give_token_states():
    cfg = config_lib.baseline_config()
    cfg.puzzle_ids, cfg.num_classes = [3, 16], [5, 27]
    vision, text, pids = checkpoint.example_inputs(cfg, batch=3)
    assert vision.shape == (3, 2048) and text.shape == (3, 110, 768) and pids.shape == (3,)
    smarter = reasoner.default_config()
    smarter.puzzle_ids, smarter.num_classes = [3], [5]
    assert checkpoint.example_inputs(smarter, batch=3)[1].shape == (3, 768)


@pytest.fixture(scope="module")
def uncached(tmp_path_factory):
    """The default baseline run: ResNet + BERT inside every step."""
    workdir = tmp_path_factory.mktemp("baseline")
    return workdir, train.train_and_evaluate(run_config(), workdir)


@pytest.mark.slow
def test_end_to_end_with_towers_in_the_step(uncached):
    workdir, results = uncached
    assert not (workdir / "features").exists()
    steps = losses(workdir)
    assert len(steps) == 5 and all(np.isfinite(steps))  # 66 train rows / 16
    assert results["test"]["n"] == 11 * 2 and 0.0 <= results["test"]["S_acc"] <= 1.0
    model, variables, cfg = reasoner.load(workdir)
    assert isinstance(model, baseline.BaselineHead)
    assert (cfg.head, cfg.vision_dim, cfg.text_dim) == ("baseline", 64, 32)  # tiny ResNet and BERT widths
    assert "q_lstm" in variables["params"] and "ans_decoder_lstm" in variables["params"]
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["towers"]["bert"].endswith("towers/bert") and saved["optim"]["name"] == "adam"


@pytest.mark.slow
def test_cached_token_states_train_the_same(uncached, tmp_path):
    """Cached features ([N, 110, D] token states, zero beyond each question) give the same run."""
    workdir, results = uncached
    reuse = {
        "synthetic.enabled": False,
        "data.root": str(workdir / "synthetic"),
        "data.data_dir": str(workdir / "tfds"),
        "towers.tiny": False,
        "towers.resnet": str(workdir / "towers" / "resnet"),
        "towers.bert": str(workdir / "towers" / "bert"),
        "cache_features": True,
    }
    cached = train.train_and_evaluate(run_config(**reuse), tmp_path)
    cache = features.read_recorded(tmp_path, "train")
    assert cache["vision"].shape == (66, 64) and cache["text"].shape == (66, 110, 32)
    empty = np.all(cache["text"] == 0, axis=-1)  # [N, 110]: positions beyond the question
    assert empty[:, -1].all() and not empty[:, :3].any()  # [CLS] + words + [SEP], then zeros
    np.testing.assert_allclose(losses(tmp_path), losses(workdir), atol=1e-5)
    assert cached["test"]["S_acc"] == results["test"]["S_acc"]


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"model.variant": "fused"}, "config.model.variant"),  # SMARTER features for the baseline head
        ({"towers.tiny": False, "towers.resnet": "/no/such/dir"}, "config.towers.resnet"),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, extra, field):
    with pytest.raises((ValueError, FileNotFoundError), match=field.replace(".", r"\.")):
        train.train_and_evaluate(run_config(**extra), tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_frozen_towers_zero_text_beyond_the_question(uncached):
    workdir, _ = uncached
    cfg = run_config()
    cfg.towers.resnet, cfg.towers.bert = str(workdir / "towers" / "resnet"), str(workdir / "towers" / "bert")
    frozen = features.load_towers(cfg.towers, "resnet")
    assert frozen.text_output == "tokens" and frozen.vision_dim == 64 and frozen.text_dim == 32
    ids = frozen.text.tokenize(["how many circles are there?", "which option"])
    batch = {"image/resnet": np.zeros((2, 224, 224, 3), np.uint8), "question_ids": ids}
    vision, text = jax.jit(frozen.features)(frozen.params(), batch)
    hidden = np.asarray(frozen.text.encode(ids))
    real = ids != 0
    np.testing.assert_array_equal(np.asarray(text)[~real], 0.0)
    np.testing.assert_allclose(np.asarray(text)[real], hidden[real], atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(text), np.asarray(baseline.question_states(hidden, real)), atol=1e-6
    )
    assert vision.shape == (2, 64)


# ----------------------------------------------------------------------------------------------------
# Inference with the baseline head (issue 16): the workdir, and a converted reference checkpoint.


@pytest.mark.slow
def test_predict_split_on_the_baseline_workdir_equals_results_json(uncached, capsys):
    workdir, _ = uncached
    assert predict.main(["--checkpoint", str(workdir), "--split", "test", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = reports.load_results(workdir)["test"]
    assert summary["n"] == saved["n"] == 22
    assert summary["S_acc"] == pytest.approx(saved["S_acc"], abs=1e-12)
    assert summary["O_acc"] == pytest.approx(saved["O_acc"], abs=1e-12)


@pytest.mark.slow
def test_converted_baseline_checkpoint_answers_real_images(uncached, tmp_path):
    """SMART baseline weights in the reference's layout -> convert reference -> predictor with ResNet + BERT
    towers -> answers equal to the PyTorch port's on the same features, one example at a time (quirks)."""
    torch = pytest.importorskip("torch")
    from smartvlm_jax.convert.__main__ import main as convert_main
    from tests.support.torch_port import baseline as port_lib
    from tests.support.torch_port.head import padded_logits

    workdir, _ = uncached
    _, _, run_cfg = reasoner.load(workdir)
    cfg = config_lib.baseline_config()
    cfg.update({k: run_cfg[k] for k in ("puzzle_ids", "num_classes", "vision_dim", "text_dim")})
    cfg.update(repr_size=16, h_sz=8, reference_quirks=True)
    torch.manual_seed(0)
    port = port_lib.TorchBaselineHead(cfg).eval()
    ckpt = tmp_path / "ckpt_resnet50_bert_0.pth"
    torch.save({"net": {k: v.detach().clone() for k, v in port.state_dict().items()}}, ckpt)
    ids = ",".join(str(p) for p in cfg.puzzle_ids)
    model_dir = tmp_path / "model"
    assert convert_main(["reference", "--ckpt", str(ckpt), "--puzzles", ids, "--out", str(model_dir)]) == 0
    with pytest.raises(ValueError, match=r"--towers DIR .*resnet, bert"):
        inference.Predictor.load(model_dir)
    towers_cfg = Workdir(workdir).read_config()["towers"]
    predictor = inference.Predictor.load(model_dir, towers=[towers_cfg["bert"], towers_cfg["resnet"]])

    # Real inputs: the run's PNGs, plus an RGBA image of odd size and a palette image, one per puzzle.
    data_cfg = ml_collections.ConfigDict(Workdir(workdir).read_config()["data"])
    rows = smart101.read_rows(data_cfg.root, data_cfg.puzzle_ids)
    rows = [next(r for r in rows if r.puzzle_id == p) for p in cfg.puzzle_ids]
    rng = np.random.default_rng(0)
    rgba = tmp_path / "odd.png"
    Image.fromarray(rng.integers(0, 256, (301, 517, 4), dtype=np.uint8), "RGBA").save(rgba)
    palette = Image.fromarray(rng.integers(0, 256, (260, 240, 3), dtype=np.uint8)).convert("P")
    images = [r.image_path for r in rows] + [str(rgba), palette]
    questions = [r.question for r in rows] + ["How many squares are there?" * 20, "Which one is RED?"]
    pids = [r.puzzle_id for r in rows] + [rows[0].puzzle_id, rows[1].puzzle_id]
    options = [r.options for r in rows] + [rows[0].options, rows[1].options]
    out = predictor.predict(images, questions, options, pids)

    vision, text = predictor.features(images, questions)
    assert vision.shape == (len(images), 64) and text.shape == (len(images), 110, 32)
    for i, pid in enumerate(pids):  # the reference's quirky LSTMs couple a batch: one example at a time
        t_pid = torch.tensor([pid])
        v, t = torch.from_numpy(vision[i : i + 1]), torch.from_numpy(text[i : i + 1])
        with torch.no_grad():
            logits = padded_logits(port(v, t, t_pid), t_pid, cfg)
        n = int(out.num_positions[i])
        np.testing.assert_array_equal(out.values[i, :n], logits.numpy()[0].argmax(-1)[:n])
    option_values = np.stack([predictor.option_values(p, o) for p, o in zip(pids, options, strict=True)])
    expected = metrics.select_options(out.values, np.asarray(pids), option_values)
    assert out.letters == [smart101.OPTION_LETTERS[c] if c >= 0 else None for c in expected]
