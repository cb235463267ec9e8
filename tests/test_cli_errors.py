"""The command-line tools answer input errors with one line, `error: ...`, and exit 1 (--traceback: more)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (["smartvlm_jax.data.build", "--data-root", "/no/such/root", "--data-dir", "/tmp/unused"],
         "error: no puzzle folders under /no/such/root"),
        (["smartvlm_jax.evaluate", "--workdir", "/no/such/workdir"], "error: /no/such/workdir/config.json"),
        (["smartvlm_jax.main", "--config", "configs/smoke.py", "--workdir", "/tmp/unused_workdir",
          "--config.towers.dtype=float8"], "error: --config.towers.dtype='float8'"),
    ],
)  # fmt: skip
@pytest.mark.slow
def test_input_errors_are_one_line_unless_traceback(args, message):
    out = _run(*args)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(message), out.stderr[-2000:]
    assert out.stderr.rstrip().splitlines()[-1] == errors[0]  # the last thing a person sees
    verbose = _run(*args, "--traceback")
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_build_names_the_flag_not_the_argument(tmp_path):
    from smartvlm_jax.data import synthetic

    for name, ids in (("a", [3]), ("b", [7])):
        synthetic.write_dataset(str(tmp_path / name), per_puzzle=2, seed=0, puzzle_ids=ids)
    assert _run("smartvlm_jax.data.build", "--data-root", str(tmp_path / "a"), "--data-dir",
                str(tmp_path / "tfds")).returncode == 0  # fmt: skip
    data_dir = str(tmp_path / "tfds")
    out = _run("smartvlm_jax.data.build", "--data-root", str(tmp_path / "b"), "--data-dir", data_dir)
    assert out.returncode == 1 and "(--overwrite)" in out.stderr and "overwrite=True" not in out.stderr


def test_convert_help_lists_its_commands():
    out = _run("smartvlm_jax.convert", "--help")
    assert out.returncode == 0 and "{hf,reference}" in out.stdout and "``reference``" in out.stdout


def test_predict_counts_are_checked_by_flag():
    out = _run("smartvlm_jax.predict", "--checkpoint", "/no/such/dir", "--batch-size", "0")
    assert out.returncode == 2 and "argument --batch-size: 0 is not >= 1" in out.stderr, out.stderr[-2000:]
