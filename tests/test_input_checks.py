"""Inputs a new user got wrong, each answered by an error naming the directory or flag (not a NaN answer,
a traceback or a silently ignored flag)."""

from __future__ import annotations

import json
import os

import pytest

from configs import smoke
from smartvlm_jax import features, reasoner, towers, train
from smartvlm_jax.workdir import Workdir
from tests.support.hf import hf_model, save_hf


def test_a_tokenizer_larger_than_the_embedding_is_refused_when_loaded(tmp_path, spiece):
    config = towers.tiny_config("siglip")
    config["text_config"]["vocab_size"] = 20  # the tokenizer has 382 ids: they would read past 20 rows
    path = save_hf(hf_model(config), str(tmp_path / "siglip"), spiece)
    message = rf"{tmp_path}/siglip: the tokenizer has \d+ ids but .*vocab_size is 20"
    with pytest.raises(ValueError, match=message):
        towers.load(path, "text")


def test_a_text_tower_without_tokenizer_is_refused_naming_its_directory(tmp_path):
    path = save_hf(hf_model(towers.tiny_config("siglip_text_model")), str(tmp_path / "text"))
    assert towers.load(path, "text").tokenizer is None  # loadable to encode ids directly
    with pytest.raises(ValueError, match=rf"{tmp_path}/text has a siglip text tower but no tokenizer"):
        features.load_text_tower(path)


def test_a_workdir_refuses_another_head(tmp_path):
    wd = Workdir(tmp_path)
    wd.best_model.mkdir()
    wd.config_file.write_text(json.dumps({"model": {"use_qf": True, "repr_size": 128}}))
    train.check_same_head(wd, {"use_qf": True, "repr_size": 128})  # the same head resumes
    with pytest.raises(ValueError, match=r"use_qf=False \(it holds True\); use a new --workdir"):
        train.check_same_head(wd, {"use_qf": False, "repr_size": 128})
    train.check_same_head(Workdir(tmp_path / "fresh"), {"use_qf": False})  # nothing held yet


def test_tiny_towers_do_not_silently_replace_named_towers(tmp_path):
    config = smoke.get_config()
    train.check_tiny_towers(config, Workdir(tmp_path))
    config.towers.dinov2 = os.fspath(tmp_path / "towers" / "dinov2")  # the run's own, recorded earlier
    train.check_tiny_towers(config, Workdir(tmp_path))
    config.towers.dinov2 = "/models/dinov2-base"
    with pytest.raises(ValueError, match=r"--config.towers.dinov2='/models/dinov2-base' would be ignored"):
        train.check_tiny_towers(config, Workdir(tmp_path))


def test_synthetic_puzzles_do_not_silently_replace_a_named_data_folder(tmp_path):
    config = smoke.get_config()
    config.data.root = os.fspath(tmp_path / "synthetic")  # the run's own, recorded earlier
    train.check_tiny_towers(config, Workdir(tmp_path))
    config.data.root = "/data/SMART101-Data"
    with pytest.raises(
        ValueError, match=r"--config.data.root='/data/SMART101-Data' would be ignored: --config"
    ):
        train.check_tiny_towers(config, Workdir(tmp_path))
    config.synthetic.enabled = False  # the folder is read: nothing to refuse here
    train.check_tiny_towers(config, Workdir(tmp_path))


def test_a_run_refuses_a_sweeps_workdir(tmp_path):
    """A main run on a stopped sweep's workdir would replace its config.json: the sweep could not resume."""
    from configs import paper

    wd = Workdir(tmp_path)
    wd.config_file.write_text(smoke.get_config().to_json_best_effort())
    train.check_not_a_sweep(wd)  # a run's own workdir
    wd.config_file.write_text(paper.get_config("smoke").to_json_best_effort())
    with pytest.raises(ValueError, match=rf"^{tmp_path} holds a sweep, not a training run: resume it with"):
        train.check_not_a_sweep(wd)
    wd.config_file.unlink()
    (tmp_path / "sweep.json").write_text("{}")
    with pytest.raises(ValueError, match="holds a sweep, not a training run"):
        train.check_not_a_sweep(wd)


def test_a_resumed_run_with_another_recipe_is_told_what_changes(tmp_path):
    wd = Workdir(tmp_path)
    saved = json.loads(smoke.get_config().to_json_best_effort())
    wd.config_file.write_text(json.dumps(saved))
    now = {**saved, "num_epochs": 800, "optim": {**saved["optim"], "lr": 0.5}}
    assert train.changed_recipe(wd, now) == []  # no checkpoint yet: nothing trained with the old values
    (wd.checkpoints / "400").mkdir(parents=True)
    lines = train.changed_recipe(wd, now)
    assert lines[0].startswith(
        f"--config.num_epochs=800: this workdir's checkpoints were trained with {saved['num_epochs']}"
    )
    assert lines[1].startswith(
        f"--config.optim.lr=0.5: this workdir's checkpoints were trained with {saved['optim']['lr']}"
    )
    assert len(lines) == 2 and train.changed_recipe(wd, saved) == []


def test_evaluate_on_a_model_dir_says_what_it_is(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"head": "smarter", "puzzle_ids": [1]}))
    with pytest.raises(ValueError, match="is a model dir, not a training workdir"):
        train.evaluate_workdir(tmp_path)


def test_evaluate_before_the_first_best_model_names_the_running_run(tmp_path, caplog):
    wd = Workdir(tmp_path)
    wd.config_file.write_text(smoke.get_config().to_json_best_effort())  # a run's, without best_model yet
    with pytest.raises(
        FileNotFoundError, match="best_model does not exist: the run stopped before its first"
    ):
        train.evaluate_workdir(tmp_path)
    with wd.lock() as me:  # the run still training there
        held = rf"best_model does not exist yet: {tmp_path} is in use by another run: pid {me['pid']} on host"
        with pytest.raises(FileNotFoundError, match=held):
            train.evaluate_workdir(tmp_path)
    assert wd.holder() is None
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/best_model does not exist: the run in"):
        reasoner.load(tmp_path)  # (predict --checkpoint, Predictor.load)
    with wd.lock() as me:
        held = rf"best_model does not exist yet: {tmp_path} is in use by another run: pid {me['pid']} on host"
        with pytest.raises(FileNotFoundError, match=held):
            reasoner.load(tmp_path)
        wd.best_model.mkdir()  # written by then: evaluated, with a warning that it is a snapshot
        caplog.clear()
        with pytest.raises(FileNotFoundError):  # (an empty best_model: no model to evaluate here)
            train.evaluate_workdir(tmp_path)
        assert f"{tmp_path} is still training (another run: pid {me['pid']}" in caplog.text


def test_a_malformed_tower_config_names_its_file(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "dinov2",}')
    with pytest.raises(ValueError, match=rf"{tmp_path}/config.json is not valid JSON"):
        towers.load(tmp_path)


def test_convert_reference_names_a_file_that_is_no_checkpoint(tmp_path, capsys):
    pytest.importorskip("torch")
    from smartvlm_jax.convert.__main__ import main as convert_main

    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("print('hello')\n")
    out = tmp_path / "model"
    args = ["reference", "--ckpt", str(not_a_checkpoint), "--puzzles", "1", "--out", str(out)]
    assert convert_main(args) == 1
    assert f"{not_a_checkpoint} is not a PyTorch checkpoint" in capsys.readouterr().err
    assert not out.exists()


def test_a_malformed_model_dir_config_names_its_file(tmp_path):
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(ValueError, match=rf"{tmp_path}/config.json is not valid JSON"):
        reasoner.load(tmp_path)
