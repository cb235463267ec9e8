"""Built and generated data are whole or absent: a build's files are checked before reuse, a puzzle folder
is renamed into place whole; the build command's console (issue 28)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from smartvlm_jax.data import build, smart101, synthetic
from smartvlm_jax.data.tfds_smart101 import dataset_path

REPO = pathlib.Path(__file__).resolve().parents[2]


def _built_files(data_dir) -> dict[str, int]:
    path = pathlib.Path(dataset_path(data_dir))
    return {p.name: p.stat().st_mtime_ns for p in path.iterdir()}


def test_a_build_whose_files_changed_is_rebuilt_not_reused(tmp_path):
    root, data_dir = tmp_path / "smart", tmp_path / "tfds"
    synthetic.write_dataset(str(root), per_puzzle=4, seed=0, puzzle_ids=[3, 7])
    build.build(root, data_dir)
    first = _built_files(data_dir)
    assert build.BUILD_RECORD in first
    assert build.build(root, data_dir).info.splits["full"].num_examples == 8
    assert _built_files(data_dir) == first  # unchanged: reused, nothing rewritten
    shard = next(p for p in pathlib.Path(dataset_path(data_dir)).iterdir() if ".array_record" in p.name)
    shard.write_bytes(shard.read_bytes()[:-100])  # a damaged (or half-copied) shard: same folder and ids
    rebuilt = build.build(root, data_dir)
    assert rebuilt.info.splits["full"].num_examples == 8
    assert shard.stat().st_size > 0 and build.recorded_digest(rebuilt.data_dir) == build.files_digest(
        rebuilt.data_dir
    )
    (pathlib.Path(dataset_path(data_dir)) / build.BUILD_RECORD).unlink()  # a build that never finished
    before = shard.stat().st_mtime_ns
    build.build(root, data_dir)
    assert shard.stat().st_mtime_ns != before


def test_an_interrupted_puzzle_write_leaves_the_folder_it_found(tmp_path, monkeypatch):
    synthetic.write_dataset(str(tmp_path), per_puzzle=3, seed=0, puzzle_ids=[16])
    csv_file = tmp_path / "16" / "puzzle_16.csv"
    before = csv_file.read_bytes()
    calls = []

    def fail_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return save(*args, **kwargs)

    save = synthetic._save_png
    monkeypatch.setattr(synthetic, "_save_png", fail_on_the_third)
    with pytest.raises(OSError, match="disk full"):
        synthetic.write_dataset(str(tmp_path), per_puzzle=5, seed=1, puzzle_ids=[16])
    assert csv_file.read_bytes() == before  # the earlier, whole folder: 3 rows and their 3 images
    assert (
        len(smart101.read_rows(tmp_path, [16])) == 3 and len(list((tmp_path / "16" / "img").iterdir())) == 3
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["16", "puzzle_info.csv"]  # no temporary left
    monkeypatch.setattr(synthetic, "_save_png", save)
    synthetic.write_dataset(str(tmp_path), per_puzzle=5, seed=1, puzzle_ids=[16])  # replaced whole
    assert (
        len(smart101.read_rows(tmp_path, [16])) == 5 and len(list((tmp_path / "16" / "img").iterdir())) == 5
    )


def test_the_build_command_names_each_bad_row_once_without_library_lines(tmp_path):
    root, data_dir = tmp_path / "smart", tmp_path / "tfds"
    synthetic.write_dataset(str(root), per_puzzle=3, seed=0, puzzle_ids=[3, 7, 16])
    bad = smart101.read_rows(root, [7])[1]
    pathlib.Path(bad.image_path).write_bytes(b"not a png")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "smartvlm_jax.data.build",
            "--data-root",
            str(root),
            "--data-dir",
            str(data_dir),
            "--puzzles",
            "3,7",
            "--skip-bad-rows",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    both = out.stdout + out.stderr
    assert sum(os.path.basename(bad.image_path) in line for line in both.splitlines()) == 1, both  # once
    assert f"{dataset_path(data_dir)}: 5 rows of puzzles [3, 7], 1 skipped" in out.stdout
    assert "INFO" not in both and "Load dataset info" not in both and "absl" not in both, both
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1] == f"warning: built {dataset_path(data_dir)} without 1 bad rows", lines
    assert [line for line in lines if "warning" in line or "error" in line] == lines[-1:]  # the only one
