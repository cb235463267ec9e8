"""The workdir: paths Orbax can read back (no glob characters; spaces and any Unicode welcome), and one run
at a time (Workdir.lock)."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys

import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from configs import smoke as smoke_config
from smartvlm_jax.workdir import Workdir, WorkdirLockedError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", ["exp[1]", "exp]", "a*b", "what?"])
def test_glob_characters_are_refused_in_one_line(tmp_path, name):
    with pytest.raises(ValueError, match=r"holds .*: Orbax finds checkpoint files by a glob pattern"):
        Workdir(tmp_path / name)
    with pytest.raises(ValueError):  # anywhere in the path, not only the last folder
        Workdir(tmp_path / name / "run")
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("module", ["smartvlm_jax.main", "smartvlm_jax.sweep", "smartvlm_jax.evaluate"])
def test_every_entry_point_refuses_them_before_any_work(tmp_path, module):
    workdir = tmp_path / "runs" / "exp[1]"
    config = ["--config", "configs/paper.py:smoke" if module.endswith("sweep") else "configs/smoke.py"]
    args = ["--workdir", str(workdir), *(config if not module.endswith("evaluate") else [])]
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        timeout=300,
    )
    assert out.returncode == 1 and out.stderr.strip() == (
        f"error: --workdir {str(workdir)!r} holds [ ]: Orbax finds checkpoint files by a glob pattern over "
        "the path, so no path here may hold [ ] * or ?; choose another folder name"
    ), out.stderr[-2000:]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["with space", "ünïcødé 実験", "tab\tand 'quote'"])
def test_spaces_and_unicode_hold_a_checkpoint_orbax_reads_back(tmp_path, name):
    wd = Workdir(tmp_path / name)
    manager = ocp.CheckpointManager(wd.checkpoints)
    manager.save(3, args=ocp.args.StandardSave({"w": jnp.arange(4.0)}))
    manager.wait_until_finished()
    again = ocp.CheckpointManager(wd.checkpoints)
    restored = again.restore(again.latest_step(), args=ocp.args.StandardRestore({"w": jnp.zeros(4)}))
    assert again.latest_step() == 3 and restored["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


def _hold(root, ready, release):  # another process holding the lock
    with Workdir(root).lock():
        ready.set()
        release.wait(60)


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path / "w"), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(WorkdirLockedError) as refused:
            with Workdir(tmp_path / "w").lock():
                pass
        message = str(refused.value)
        assert "\n" not in message
        holder_named = f"pid {holder.pid} on host {socket.gethostname()} since "
        assert message.startswith(f"{tmp_path / 'w'} is in use by another run: {holder_named}"), message
        assert message.endswith("; wait for that run to end, or choose another workdir")
    finally:
        release.set()
        holder.join(60)
    with Workdir(tmp_path / "w").lock() as me:  # released when the holder left
        assert me["pid"] == os.getpid()


def test_the_same_process_cannot_hold_it_twice_and_release_frees_it(tmp_path):
    wd = Workdir(tmp_path)
    with wd.lock() as me:
        assert json.loads(wd.lock_file.read_text()) == me
        with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()} on host"):
            with wd.lock():
                pass
    assert wd.lock_file.read_text() == ""  # released: no holder named
    with wd.lock():
        pass


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    assert ready.wait(60)
    os.kill(holder.pid, signal.SIGKILL)  # no cleanup of any kind
    holder.join(60)
    left = json.loads(Workdir(tmp_path).lock_file.read_text())
    assert left["pid"] == holder.pid  # its record is still there
    with Workdir(tmp_path).lock() as me:
        assert me["pid"] == os.getpid()
        assert json.loads(Workdir(tmp_path).lock_file.read_text())["pid"] == os.getpid()


@pytest.mark.parametrize("module", ["smartvlm_jax.main", "smartvlm_jax.sweep"])
def test_a_second_run_on_a_busy_workdir_is_refused_in_one_line(tmp_path, module):
    """Two runs (or sweeps) on one workdir: the second stops before any work, naming the first."""
    workdir = tmp_path / "busy"
    config = "configs/paper.py:smoke" if module.endswith("sweep") else "configs/smoke.py"
    with Workdir(workdir).lock() as holder:
        winners_log = b"the first run's lines\n"
        Workdir(workdir).run_log().write_bytes(winners_log)
        # the winner is a main run that wrote its config: a sweep is told of the lock, not of that config
        winners_config = smoke_config.get_config().to_json_best_effort().encode()
        (workdir / "config.json").write_bytes(winners_config)
        out = subprocess.run(
            [sys.executable, "-m", module, "--config", config, "--workdir", str(workdir)],
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
            timeout=300,
        )
    assert out.returncode == 1, out.stderr[-2000:]
    line = f"error: {workdir} is in use by another run: pid {holder['pid']} on host {holder['host']} since "
    errors = [text for text in out.stderr.splitlines() if text.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(line), out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (workdir / "synthetic").exists() and (workdir / "config.json").read_bytes() == winners_config
    assert Workdir(workdir).run_log().read_bytes() == winners_log  # the loser wrote nothing into it


def test_an_empty_workdir_is_one_line(tmp_path):
    config = os.path.join(REPO, "configs", "smoke.py")
    cmd = [sys.executable, "-m", "smartvlm_jax.main", "--config", config, "--workdir", ""]
    out = subprocess.run(
        cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": REPO}
    )  # (run elsewhere: nothing may land in the working directory)
    assert out.returncode == 1 and out.stderr.strip().endswith(
        "error: --workdir is empty: name the folder of the run"
    )
    assert not any(tmp_path.iterdir())


def test_an_installed_accelerator_plugin_stays_idle_without_its_hardware():
    """The [tpu-compile] extra's libtpu or the [gpu-compile] extra's CUDA plugin on a machine without a TPU
    or GPU: JAX is kept off it (libtpu's client prints errors at every start, the CUDA plugin a traceback);
    with JAX_PLATFORMS set, the user's choice stands."""
    import glob
    import importlib.util

    from smartvlm_jax import cli

    script = (
        "import os; from smartvlm_jax import cli; cli.keep_jax_off_absent_accelerators(); "
        "print(os.environ.get('JAX_PLATFORMS'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, env=env)
    tpu = importlib.util.find_spec("libtpu") is not None and not glob.glob("/dev/accel*")
    gpu = importlib.util.find_spec("jax_cuda12_plugin") is not None and not os.path.exists("/dev/nvidiactl")
    assert out.stdout.strip() == ("cpu" if tpu or gpu else "None"), out.stderr
    env["JAX_PLATFORMS"] = "cpu,tpu"
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "cpu,tpu"
    # every combination: a present accelerator stays in, an absent one's plugin is left out
    present = lambda tpu_in, cuda_in, tpu_at, gpu_at: cli.platforms_present(tpu_in, cuda_in, tpu_at, gpu_at)
    assert present(False, False, False, False) is None
    assert present(True, False, True, False) is None  # a TPU VM: JAX picks the TPU itself
    assert present(False, True, False, True) is None  # a GPU host: JAX picks the GPU itself
    assert present(True, False, False, False) == "cpu"
    assert present(False, True, False, False) == "cpu"
    assert present(True, True, False, False) == "cpu"
    assert present(True, True, False, True) == "cuda,cpu"  # a GPU host with the [tpu-compile] extra
    assert present(True, True, True, False) == "tpu,cpu"
