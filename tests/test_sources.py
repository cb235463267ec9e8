"""sources.json: the digests of a run's data root and towers (workdir) and of a head's towers (model dir);
a changed tower is refused naming both directories, changed data is one warning."""

import json
import logging
import os
import shutil

import pytest

from smartvlm_jax import sources
from smartvlm_jax.data import synthetic
from smartvlm_jax.workdir import Workdir


@pytest.fixture
def run_dirs(tmp_path):
    """A workdir holding its data and one tower; another tower outside it. (Tower digests read every
    file, so any folder stands in for a tower.)"""
    wd = Workdir(tmp_path / "run")
    synthetic.write_dataset(str(wd.synthetic), per_puzzle=3, seed=0, puzzle_ids=[1, 2])
    (wd.towers / "dinov2").mkdir(parents=True)
    (wd.towers / "dinov2" / "config.json").write_text('{"model_type": "dinov2"}')
    outside = tmp_path / "models" / "siglip"
    outside.mkdir(parents=True)
    (outside / "config.json").write_text('{"model_type": "siglip"}')
    data = {"root": str(wd.synthetic), "puzzle_ids": "1,2"}
    towers = {"dinov2": str(wd.towers / "dinov2"), "siglip": str(outside)}
    return wd, data, towers


def test_a_workdir_records_digests_with_its_own_paths_relative(run_dirs):
    wd, data, towers = run_dirs
    recorded = sources.run_sources(data, towers, "fused")
    assert sorted(recorded) == ["data.root", "towers.dinov2", "towers.siglip"]
    assert recorded["towers.siglip"]["digest"] == sources.tower_digest(towers["siglip"])
    sources.write(wd.root, recorded, base=wd.root)
    stored = json.loads((wd.root / "sources.json").read_text())
    assert stored["data.root"]["path"] == "synthetic" and stored["towers.dinov2"]["path"] == "towers/dinov2"
    assert stored["towers.siglip"]["path"] == towers["siglip"]  # outside: as given
    assert sources.read(wd.root) == recorded  # made absolute again
    assert sources.read(wd.root / "nothing here") == {}  # written before sources.json existed


def test_a_changed_tower_is_refused_naming_both_and_changed_data_is_one_warning(run_dirs, caplog):
    wd, data, towers = run_dirs
    before = sources.run_sources(data, towers, "fused")
    sources.write(wd.root, before, base=wd.root)
    sources.check_run(wd.root, before, consequence="unused", refuse_how="unused")  # unchanged: silent

    copy = wd.root.parent / "siglip copy"
    shutil.copytree(towers["siglip"], copy)
    (copy / "config.json").write_text('{"model_type": "siglip", "hidden_size": 7}')
    image = next((wd.synthetic / "1" / "img").iterdir())
    os.utime(image, ns=(0, 0))  # the same bytes, another mtime: what a plain cp does
    after = sources.run_sources(data, {**towers, "siglip": str(copy)}, "fused")
    with pytest.raises(sources.SourceChangedError) as refused:
        sources.check_run(wd.root, after, consequence="c", refuse_how="do this")
    old, new = before["towers.siglip"]["digest"][:12], after["towers.siglip"]["digest"][:12]
    assert str(refused.value) == (
        f"towers.siglip {copy} holds other contents than the tower the run was trained with, "
        f"{towers['siglip']} (digest {new}, recorded {old} in {wd.root / 'sources.json'}); do this"
    )
    assert str(refused.value.allowed_by("--flag")).endswith("; --flag")
    old, new = before["data.root"]["digest"][:12], after["data.root"]["digest"][:12]
    assert caplog.messages == [
        f"data.root {wd.synthetic}: its rows or images changed since the run read them (digest {new}, "
        f"recorded {old} in {wd.root / 'sources.json'}); c"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        sources.check_run(wd.root, after, consequence="going on", refuse_how=None)  # allowed: warnings
    assert len(caplog.messages) == 2 and caplog.messages[1].endswith(
        f"in {wd.root / 'sources.json'}); going on"
    )


def test_a_model_dir_refuses_towers_other_than_its_own(run_dirs, caplog):
    wd, data, towers = run_dirs
    model_dir = wd.best_model
    model_dir.mkdir()
    sources.write(model_dir, sources.towers_only(sources.run_sources(data, towers, "fused")))
    assert sorted(json.loads((model_dir / "sources.json").read_text())) == ["towers.dinov2", "towers.siglip"]
    sources.check_model_towers(model_dir, towers)  # its own towers: fine
    moved = wd.root.parent / "moved" / "siglip"
    shutil.copytree(towers["siglip"], moved)
    sources.check_model_towers(model_dir, {**towers, "siglip": moved})  # moved, same contents: fine
    (moved / "extra_tokens.json").write_text("{}")
    with pytest.raises(sources.SourceChangedError) as refused:
        sources.check_model_towers(model_dir, {"siglip": moved})
    recorded = sources.read(model_dir)["towers.siglip"]["digest"][:12]
    assert str(refused.value) == (
        f"{model_dir} was trained with towers.siglip {towers['siglip']} (digest {recorded}), but {moved} "
        f"holds other contents (digest {sources.tower_digest(moved)[:12]}); "
        "pass allow_other_towers=True to answer anyway"
    )
    with caplog.at_level(logging.WARNING):
        sources.check_model_towers(model_dir, {"siglip": moved}, allow=True)
    assert caplog.messages[-1].endswith("; answering anyway (allowed)")
    sources.check_model_towers(wd.root, {"siglip": moved})  # no sources.json (an older dir): nothing


def test_moved_paths_are_applied_and_a_missing_one_names_its_flag(tmp_path):
    wd = Workdir(tmp_path / "run")
    saved = {"data": {"root": "/gone/data", "data_dir": ""}, "towers": {"dinov2": "/gone/dinov2"}}
    with pytest.raises(FileNotFoundError) as missing:
        wd.with_moved_paths(saved, {})
    assert str(missing.value) == (
        f"{wd.config_file} records data.root='/gone/data', which is missing: give its new place with "
        "--config.data.root=PATH"
    )
    assert wd.with_moved_paths(saved, {}, check=["towers.siglip"]) == saved  # only what is read is checked
    moved = wd.with_moved_paths(saved, {"data.root": str(tmp_path)}, check=["data.root"])
    assert moved["data"]["root"] == str(tmp_path) and saved["data"]["root"] == "/gone/data"
    with pytest.raises(
        ValueError, match=r"^--config.data.rot: not a path of the run config \(paths: data.root"
    ):
        wd.with_moved_paths(saved, {"data.rot": "x"})
