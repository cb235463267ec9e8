"""Test-session settings: 8 simulated CPU devices in the pytest process (for sharding tests), no network for
Hugging Face, and XLA's persistent compilation cache and the project's per-user cache (the feature store)
in directories of this session (not the user's ~/.cache); the fixtures several directories share.

The runs tests start as subprocesses see one CPU device, as a user's CPU run does: the devices are set
through ``jax_num_cpu_devices`` in this process, not through ``XLA_FLAGS``, which they would inherit, and
compiling for 8 simulated devices made those runs a fifth slower (the shared sweep: 80 s against 63 s).
A test that launches multi-device processes says so in their environment (tests/test_launch.py)."""

import atexit
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # configs' compile_cache_dir default reads it
    _cache = tempfile.mkdtemp(prefix="smartvlm_jax_tests_xla_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)
if "SMARTVLM_JAX_CACHE" not in os.environ:  # configs' feature_store default reads it (user_cache_dir)
    _user_cache = tempfile.mkdtemp(prefix="smartvlm_jax_tests_cache_")
    os.environ["SMARTVLM_JAX_CACHE"] = _user_cache
    atexit.register(shutil.rmtree, _user_cache, True)

import jax  # after the environment above, which jax reads at import

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(scope="session")
def spiece(tmp_path_factory) -> str:
    """A 500-piece BPE sentencepiece model (pad 0, eos 1, unk 2), for the tower and input-check tests."""
    from smartvlm_jax import towers  # imported here: the environment above must be set before jax loads
    from tests.support import tiny_towers

    return towers.train_sentencepiece(
        tiny_towers.sentences(), tmp_path_factory.mktemp("spiece"), vocab_size=500
    )


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> pathlib.Path:
    """A finished smoke run (``python -m smartvlm_jax.main --config configs/smoke.py``, 11 synthetic puzzles x
    40 instances: 264 train, 88 val, 88 test; 4 epochs; its own feature store), made once for the session:
    the predictor's tests (test_predict.py) and the run page's (tests/report) read it."""
    from tests.support.runs import REPO

    root = tmp_path_factory.mktemp("smoke_run")
    workdir = root / "run"
    command = [sys.executable, "-m", "smartvlm_jax.main", "--config", "configs/smoke.py"]
    command += ["--workdir", str(workdir), f"--config.feature_store={root / 'store'}"]
    command += ["--config.synthetic.per_puzzle=40", "--config.data.data_tot=40", "--config.num_epochs=4"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


@pytest.fixture(scope="session")
def paper_sweep(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path, subprocess.CompletedProcess]:
    """The smoke sweep made small (``configs/paper.py:smoke`` with ``tests.support.runs.SMALL_SWEEP``: all 5
    rows x 2 seeds, 11 puzzles x 30 instances, 2 epochs), run once in a subprocess for the session: its
    workdir, its feature store and the finished command (stdout holds the table). test_sweep.py checks the
    sweep on it and tests/report the sweep page it writes."""
    from tests.support.runs import REPO, SMALL_SWEEP

    root = tmp_path_factory.mktemp("sweep")
    workdir, store = root / "run", root / "store"
    command = [sys.executable, "-m", "smartvlm_jax.sweep", "--config", "configs/paper.py:smoke"]
    command += ["--workdir", str(workdir), f"--config.feature_store={store}", *SMALL_SWEEP]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    # A crash's cause is near the start of its dump (faulthandler then lists every thread and module).
    fatal = [line for line in done.stderr.splitlines() if "Fatal" in line or "Check failed" in line][:5]
    assert done.returncode == 0, "\n".join(fatal) + "\n...\n" + done.stderr[-3000:]
    return workdir, store, done
