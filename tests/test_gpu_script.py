"""benchmarks/gpu: the device script's CPU dry run end to end, and the carried-wheel check."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tarfile
import zipfile

import pytest

from benchmarks.gpu import check_wheels

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_run_sh_dry_run_leaves_every_part_result(tmp_path):
    """`run.sh --dry-run` (tiny sizes, JAX on CPU) runs all parts to exit 0 and leaves their JSON and logs
    in the archive, as the GPU run returns them through the device tool."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path)}
    env.pop("XLA_FLAGS", None)  # one CPU device, as the lent machine has one GPU (8 cost compiles)
    cmd = ["bash", "benchmarks/gpu/run.sh", "--dry-run", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    for part in ("imports", "tests", "towers", "predict", "main_job", "throughput"):
        assert f"{part}: exit 0 " in summary, summary
    assert "6 of 6 parts exited 0" in summary
    assert sorted(p.name for p in out.iterdir()) == ["gpu_results.tar.gz", "summary.txt"]  # <= 8 files back
    with tarfile.open(out / "gpu_results.tar.gz") as tar:
        names = {pathlib.Path(n).name for n in tar.getnames()}
        read = lambda name: json.load(tar.extractfile(f"./{name}"))
        towers, job, throughput = read("towers.json"), read("main_job.json"), read("throughput.json")
        prediction = read("prediction.json")
    logs = {f"{part}.log" for part in ("tests", "towers", "predict", "main_job", "throughput")}
    assert {"machine.txt", *logs} <= names
    predicted = prediction["compile_only"]
    assert prediction["returncode"] == 0 and predicted["target"] == "cpu"
    assert [p["name"] for p in predicted["programs"]] == ["towers", "train_step", "eval_step"]
    assert all(p["peak_bytes"] > 0 and p["flops"] > 0 for p in predicted["programs"])
    measured = {(r["tower"], r["batch"]) for r in towers["towers"]}
    assert measured >= {("dinov2-tiny", 2), ("siglip-tiny text", 4), ("instances (all 3)", 4)}
    assert towers["tiny"] is True
    assert all(r["per_s"]["jax bf16"] > 0 for r in towers["towers"])
    assert job["returncode"] == 0 and 0 <= job["test"]["S_acc"] <= 1
    assert set(throughput["rows"]) == {
        "towers_forward",
        "full_train_step",
        "head_train_step",
        "inference",
        "input_pipeline",
        "whole_run",
    }
    assert not list(tmp_path.glob("smartvlm_gpu.*")), "run.sh left its scratch directory"


def _wheel(directory: pathlib.Path, name: str, version: str, requires: list[str], tag: str = "py3-none-any"):
    path = directory / f"{name}-{version}-{tag}.whl"
    meta = "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n{meta}")
    return path


def test_check_wheels_finds_missing_dependencies_versions_and_wrong_platforms(tmp_path):
    device = {"numpy": "2.5.2", "absl-py": None, "jax": "0.11.2", "jaxlib": "0.11.2"}
    _wheel(tmp_path, "grain", "0.2.18", ["numpy>=2", "absl-py", 'pywin32; sys_platform == "win32"'])
    problems, notes = check_wheels.check(tmp_path, device)
    assert not [p for p in problems if "grain" in p], problems  # markers for other platforms do not count
    assert any("not recorded" in n and "absl-py" in n for n in notes)
    assert any("the device has 0.11.2" in n for n in notes)  # our jax pin vs the device's jax
    _wheel(tmp_path, "clu", "0.0.12", ["numpy<2", "flax"])
    _wheel(tmp_path, "dm_tree", "0.1.10", [], tag="cp311-cp311-manylinux_2_17_x86_64")
    problems, _ = check_wheels.check(tmp_path, device)
    assert any("numpy<2" in p and "2.5.2 on the device" in p for p in problems), problems
    assert any("clu needs flax" in p and "neither carried nor on the device" in p for p in problems)
    assert any("dm_tree" in p and "cp312" in p for p in problems)
