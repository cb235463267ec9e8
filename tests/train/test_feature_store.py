"""The feature store runs share: per-tower columns reused by another variant without loading a tower, new
keys for a changed tower or data file, the workdir opt-out, the entry lock, and a rebuilt stale dataset."""

import json
import pathlib
import shutil
import threading
import time

import numpy as np
import pytest
from safetensors.numpy import save_file

from smartvlm_jax import features, hashing, towers, train
from smartvlm_jax.data import build, smart101
from tests.support.runs import reusing, run_config

QUICK = {"num_epochs": 1, "max_steps": 2}  # enough to read every split's features and evaluate


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """A fused run (dinov2 + siglip vision columns, siglip text) into a store of its own."""
    workdir = tmp_path_factory.mktemp("fused")
    store = tmp_path_factory.mktemp("store")
    train.train_and_evaluate(run_config(feature_store=str(store), **QUICK), workdir)
    return workdir, store


def record(workdir: pathlib.Path) -> dict:
    return json.loads((workdir / "features.json").read_text())["splits"]


@pytest.mark.slow
def test_another_variant_reads_the_columns_and_loads_no_tower(fused, tmp_path, monkeypatch):
    workdir, store = fused
    fused_record = record(workdir)
    assert fused_record["train"]["extracted"] and len(fused_record["train"]["vision"]) == 2

    def no_tower(*args, **kwargs):
        raise AssertionError("a tower was loaded")

    monkeypatch.setattr(towers, "load", no_tower)
    monkeypatch.setattr(features, "load_towers", no_tower)
    config = run_config(**reusing(workdir), **QUICK, feature_store=str(store))
    config.model.variant = "dinov2"
    train.train_and_evaluate(config, tmp_path)
    for split, info in record(tmp_path).items():
        assert info["extracted"] == [] and info["entry"] == fused_record[split]["entry"]
        assert info["vision"] == fused_record[split]["vision"][:1]  # dinov2's column, not siglip's
        assert info["text"] == fused_record[split]["text"]
        ours, theirs = features.read_recorded(tmp_path, split), features.read_recorded(workdir, split)
        assert ours["vision"].shape[1] == 32  # one tiny tower's width
        np.testing.assert_array_equal(ours["vision"], theirs["vision"][:, :32])  # bitwise
        np.testing.assert_array_equal(ours["text"], theirs["text"])


@pytest.mark.slow
def test_a_changed_tower_file_gives_a_new_column(fused, tmp_path):
    """A tower directory with other weights (same config) keys a new column, extracted fresh; the other
    tower's columns are reused."""
    workdir, store = fused
    dinov2 = tmp_path / "dinov2"
    towers.create_random(dinov2, "dinov2", towers.tiny_config("dinov2"), seed=7)
    overrides = {**reusing(workdir), **QUICK, "feature_store": str(store), "towers.dinov2": str(dinov2)}
    train.train_and_evaluate(run_config(**overrides), tmp_path / "run")
    before, after = record(workdir)["train"], record(tmp_path / "run")["train"]
    assert after["extracted"] == [after["vision"][0]] and after["vision"][0] != before["vision"][0]
    assert after["vision"][1:] == before["vision"][1:] and after["text"] == before["text"]
    new = features.read_recorded(tmp_path / "run", "train")["vision"]
    assert not np.allclose(new[:, :32], features.read_recorded(workdir, "train")["vision"][:, :32])


def test_tower_digest_follows_every_file_and_memoises_large_ones(tmp_path, monkeypatch):
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text('{"model_type": "dinov2", "hidden_size": 32}')
    save_file({"w": np.zeros((4, 4), np.float32)}, str(hf_dir / "model.safetensors"))
    first = towers.content_digest(hf_dir)
    save_file({"w": np.ones((4, 4), np.float32)}, str(hf_dir / "model.safetensors"))  # same size
    assert towers.content_digest(hf_dir) != first
    # two writes of the same converted weights (Orbax's files differ) have one digest; other weights not
    a, b, c = (
        towers.create_random(tmp_path / n, "dinov2", towers.tiny_config("dinov2"), seed=s)
        for n, s in (("a", 0), ("b", 0), ("c", 1))
    )
    assert towers.content_digest(a) == towers.content_digest(b) != towers.content_digest(c)
    monkeypatch.setattr(hashing, "MEMO_MIN_BYTES", 0)
    big = hf_dir / "model.safetensors"
    digest = hashing.file_digest(big, tmp_path / "memo")
    assert len(list((tmp_path / "memo").iterdir())) == 1
    assert hashing.file_digest(big, tmp_path / "memo") == digest  # from the memo
    save_file({"w": np.full((4, 4), 2, np.float32)}, str(big))  # rewritten: new identity, new digest
    assert hashing.file_digest(big, tmp_path / "memo") != digest


def copy_root(workdir: pathlib.Path, to: pathlib.Path) -> pathlib.Path:
    shutil.copytree(workdir / "synthetic", to, copy_function=shutil.copy2)  # mtimes kept
    return to


@pytest.mark.slow
def test_a_changed_data_file_gives_a_new_entry_and_a_rebuilt_dataset(fused, tmp_path):
    """A copy that keeps mtimes keeps the fingerprint; a changed CSV row or image changes it; the built
    dataset of the old contents is rebuilt, and the run extracts fresh features into a new entry."""
    workdir, store = fused
    root = copy_root(workdir, tmp_path / "root")
    rows = lambda: smart101.read_rows(root, "all")
    original = smart101.rows_fingerprint(rows())
    assert original == smart101.rows_fingerprint(smart101.read_rows(workdir / "synthetic", "all"))
    image = pathlib.Path(rows()[0].image_path)
    image.write_bytes(image.read_bytes())  # same bytes, new mtime: counted as changed (never stale)
    assert smart101.rows_fingerprint(rows()) != original
    data_dir = tmp_path / "tfds"
    build.build(root, data_dir)
    built = smart101.rows_fingerprint(rows())
    csv = root / "1" / "puzzle_1.csv"
    question = rows()[0].question
    csv.write_text(csv.read_text().replace(question, "Which icon is it?", 1))
    assert smart101.rows_fingerprint(rows()) not in (built, original)
    rebuilt = build.build(root, data_dir)  # stale: rebuilt, not reused
    assert rebuilt.info.metadata["fingerprint"] == smart101.rows_fingerprint(rows()) != built
    overrides = {**reusing(workdir), **QUICK, "feature_store": str(store)}
    overrides.update({"data.root": str(root), "data.data_dir": str(data_dir)})
    train.train_and_evaluate(run_config(**overrides), tmp_path / "run")
    info, before = record(tmp_path / "run")["train"], record(workdir)["train"]
    assert info["entry"] != before["entry"] and len(info["extracted"]) == 3
    assert info["vision"] == before["vision"] and info["text"] == before["text"]  # same towers


@pytest.mark.slow
def test_opt_out_keeps_the_features_in_the_workdir(fused, tmp_path):
    workdir, _ = fused
    train.train_and_evaluate(run_config(**reusing(workdir), **QUICK, feature_store=""), tmp_path)
    info = record(tmp_path)
    assert json.loads((tmp_path / "features.json").read_text())["store"] == str(tmp_path / "features")
    for split in train.SPLITS:
        entry = pathlib.Path(info[split]["entry"])
        assert entry.parent == tmp_path / "features" and len(info[split]["extracted"]) == 3
        assert (entry / f"{info[split]['text']}.npy").is_file()


@pytest.mark.slow
def test_a_second_writer_waits_for_the_entry_lock_then_extracts_nothing(fused, tmp_path):
    workdir, store = fused
    run = train.setup(run_config(**reusing(workdir), feature_store=str(store)), tmp_path)
    plan = run.feature_plans["val"]
    assert plan.missing() == []
    calls, done = [], threading.Event()
    with features.locked(plan.entry, enabled=True):
        (plan.entry / f"{plan.text.name}.npy").rename(tmp_path / "text.npy")  # "being extracted"
        assert plan.missing() == [plan.text]
        waiter = threading.Thread(target=lambda: (calls.append(features.fill_split(plan, None)), done.set()))
        waiter.start()
        time.sleep(0.5)
        assert not done.is_set()  # waits on the lock
        (tmp_path / "text.npy").rename(plan.entry / f"{plan.text.name}.npy")  # the first writer finishes
    waiter.join(10)
    assert calls == [[]]  # found the column, extracted nothing (extract=None was never called)
