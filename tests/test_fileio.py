"""fileio: whole files or nothing, and no temporary left behind."""

from __future__ import annotations

import json

import pytest

from smartvlm_jax import fileio


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    fileio.write_json(path, {"a": 1}, indent=2)
    assert path.read_text() == '{\n  "a": 1\n}\n'
    with pytest.raises(ValueError, match="Out of range float"):
        fileio.write_json(path, {"a": float("nan")}, allow_nan=False)
    with pytest.raises(RuntimeError, match="killed"), fileio.atomic_open(path, "w") as f:
        f.write("half")
        raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    fileio.write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    with pytest.raises(ValueError, match="mode 'a'"), fileio.atomic_open(path, "a"):
        pass


def test_atomic_path_renames_what_a_named_writer_wrote(tmp_path):
    out = tmp_path / "lib.so"
    with fileio.atomic_path(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".tmp")
        tmp.write_text("built")
        assert not out.exists()
    assert out.read_text() == "built" and [p.name for p in tmp_path.iterdir()] == ["lib.so"]


def test_staged_dir_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(OSError, match="disk full"), fileio.staged_dir(out) as staging:
        (staging / "config.json").write_text("{}")
        raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []
    out.mkdir()  # an empty directory is replaced
    with fileio.staged_dir(out) as staging:
        (staging / "config.json").write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and (out / "config.json").read_text() == "{}"
    with pytest.raises(FileExistsError, match=f"{out} exists and is not an empty directory"):
        with fileio.staged_dir(out):
            pass


def test_staged_dir_replaces_a_full_directory_only_when_asked(tmp_path):
    out = tmp_path / "best_model"
    out.mkdir()
    (out / "params.safetensors").write_text("old")
    with fileio.staged_dir(out, replace=True) as staging:
        (staging / "params.safetensors").write_text("new")
        assert (out / "params.safetensors").read_text() == "old"  # untouched while the new one is written
    assert [p.name for p in out.iterdir()] == ["params.safetensors"]
    assert (out / "params.safetensors").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["best_model"]
