"""SIGTERM and Ctrl-C at every stage: the run stops where it is safe, keeps what it finished, exits 0, and
the same command resumes to the result of a run never stopped. A second Ctrl-C aborts at once.

The stages outside the loop are stopped in-process through ``train_group``'s ``stop`` event (what the
sweep's rows use), set at a chosen moment; the signals themselves are sent to real processes.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from smartvlm_jax import reports, summaries, train
from smartvlm_jax.train import evaluation
from smartvlm_jax.train import inputs as inputs_lib
from smartvlm_jax.workdir import Workdir
from tests.support.runs import OVERRIDES, REPO, reusing, run_config


def train_until_stopped(config, workdir, stop: threading.Event) -> dict:
    with summaries.CompileLog() as compiles:
        return train.train_group(config, Workdir(workdir), compiles, stop=stop)[0]


def assert_resumes_to_the_reference(config, workdir, reference_results) -> None:
    results = train.train_and_evaluate(config, workdir)
    for key in ("S_acc", "O_acc"):
        assert results["test"][key] == reference_results["test"][key], key


def test_a_stop_while_writing_synthetic_puzzles_leaves_none_half_written(tmp_path):
    stop = threading.Event()
    stop.set()  # asked before the first puzzle is written: the writer stops after it
    config = run_config(**{"synthetic.per_puzzle": 4, "data.data_tot": 4})
    assert train_until_stopped(config, tmp_path, stop) == {"stopped_at_step": 0}
    assert not (tmp_path / "synthetic").exists() and not (tmp_path / "tfds").exists()
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_a_stop_during_extraction_keeps_its_shards_and_the_rerun_resumes(reference, tmp_path, monkeypatch):
    workdir, results = reference
    config = run_config(**reusing(workdir), feature_shard_batches=1, feature_store=str(tmp_path / "store"))
    stop, seen = threading.Event(), []
    image_batches = inputs_lib.image_batches

    def stopping_after_two(run, towers, split, **kwargs):
        # The stop comes as the 4th batch is read: 3 pass, and the extraction, which writes a batch once the
        # next is launched, has written 2 when it stops (each its own shard: feature_shard_batches=1).
        for batch in image_batches(run, towers, split, **kwargs):
            seen.append(split)
            if len(seen) == 4:
                stop.set()
            yield batch

    with monkeypatch.context() as patch:
        patch.setattr(inputs_lib, "image_batches", stopping_after_two)
        assert train_until_stopped(config, tmp_path / "run", stop) == {"stopped_at_step": 0}
    (work,) = (tmp_path / "store").glob("train-*/extracting-*")
    assert sorted(p.name for p in work.glob("shard_*")) == ["shard_00000.npy", "shard_00001.npy"]
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert_resumes_to_the_reference(config, tmp_path / "run", results)


@pytest.mark.slow
def test_a_stop_during_the_test_evaluation_writes_no_results_and_the_rerun_tests(
    reference, tmp_path, monkeypatch
):
    workdir, results = reference
    config = run_config(**reusing(workdir), feature_store=str(tmp_path / "store"))
    stop = threading.Event()
    best_params = evaluation.best_params

    def stopping(run):  # the test evaluation is about to start
        stop.set()
        return best_params(run)

    with monkeypatch.context() as patch:
        patch.setattr(evaluation, "best_params", stopping)
        stopped = train_until_stopped(config, tmp_path, stop)
    last = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert stopped == {"stopped_at_step": last} and last == results["steps"]
    assert not (tmp_path / "results.json").exists() and (tmp_path / "best_model").is_dir()
    assert_resumes_to_the_reference(config, tmp_path, results)


@pytest.mark.slow
def test_evaluate_stopped_writes_nothing(reference, monkeypatch):
    workdir, _ = reference
    before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}

    def interrupted(self, batches, stage):  # as if SIGTERM came before the first test batch
        self.event.set()
        return original(self, batches, stage)

    original = train.StopSignal.guard
    monkeypatch.setattr(train.StopSignal, "guard", interrupted)
    out = train.evaluate_workdir(workdir, out=workdir / "stopped_evaluation")
    message = "SIGTERM during the test evaluation: stopped, nothing written"
    assert out == {"stopped": "the test evaluation", "message": message, "table": "", "written": []}
    assert not (workdir / "stopped_evaluation").exists()
    assert {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()} == before


def main_command(workdir, reference_workdir) -> list[str]:
    return [
        sys.executable,
        "-m",
        "smartvlm_jax.main",
        "--config",
        "configs/smoke.py",
        "--workdir",
        str(workdir),
        *[f"--config.{k}={v}" for k, v in {**OVERRIDES, **reusing(reference_workdir)}.items()],
        f"--config.feature_store={workdir}/store",
    ]


def signal_when(process: subprocess.Popen, ready, signum: int, timeout: float = 180) -> bytes:
    """Send ``signum`` once ``ready()`` holds; the process's output once it has exited."""
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[0].decode()[-3000:]
        assert time.time() < deadline, "the moment to signal never came"
        time.sleep(0.02)
    process.send_signal(signum)
    return process.communicate(timeout=180)[0]


@pytest.mark.slow
def test_sigterm_during_extraction_exits_0_and_the_rerun_resumes(reference, tmp_path):
    workdir, results = reference
    cmd = [*main_command(tmp_path, workdir), "--config.feature_shard_batches=1", "--config.eval_batch_size=8"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    extracting = lambda: any(tmp_path.glob("store/*/extracting-*/shard_00000.npy"))
    out = signal_when(first, extracting, signal.SIGTERM)
    assert first.returncode == 0, out.decode()[-3000:]
    assert b"SIGTERM during the " in out and b"feature extraction: stopped; the same command resumes" in out
    assert b"Traceback" not in out and not (tmp_path / "results.json").exists()
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=600)
    assert second.returncode == 0, second.stderr.decode()[-3000:]
    resumed = reports.load_results(tmp_path)["test"]
    assert (resumed["S_acc"], resumed["O_acc"]) == (results["test"]["S_acc"], results["test"]["O_acc"])
    at = re.search(rb"features (\w+): resuming at batch \d+ \((\d+) done\)", second.stderr)
    if at:  # its closing line counts what this process extracted, and names the rest
        line = rb"features " + at[1] + rb": \d+ of \d+ samples in [\d.]+ s \(" + at[2] + rb" done before\)"
        assert re.search(line, second.stderr), second.stderr.decode()[-3000:]


@pytest.mark.slow
def test_ctrl_c_in_training_saves_and_exits_0_with_one_line(reference, tmp_path):
    workdir, _ = reference
    cmd = [*main_command(tmp_path, workdir), "--config.cache_features=False"]  # slow steps: time to interrupt
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    checkpoints = tmp_path / "checkpoints"
    saved = lambda: checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())
    out = signal_when(first, saved, signal.SIGINT)
    assert first.returncode == 0, out.decode()[-3000:]
    text = out.decode()
    assert "Ctrl-C: saving step" in text and "Traceback" not in text and "KeyboardInterrupt" not in text
    assert not (tmp_path / "results.json").exists()
    latest = max(checkpoints.iterdir(), key=lambda p: int(p.name))
    meta = json.loads((latest / "meta" / "metadata").read_text())
    assert "train_window" in meta


def test_a_second_ctrl_c_aborts_at_once(tmp_path):
    script = textwrap.dedent(
        """
        import os, signal, time
        from smartvlm_jax.train.signals import StopSignal
        with StopSignal() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            assert stop.event.is_set() and stop.reason == "Ctrl-C", "the first Ctrl-C asks for a stop"
            print("asked to stop", time.time(), flush=True)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)
        print("not aborted", flush=True)
        """
    )
    cmd = [sys.executable, "-c", script]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert done.stdout.startswith("asked to stop ") and "not aborted" not in done.stdout
    assert (
        "Ctrl-C again: aborted at once; the same command resumes" in done.stderr
        and "Traceback" not in done.stderr
    )
    assert time.time() - float(done.stdout.split()[3]) < 5  # not the 10 s sleep (the import is not timed)


def test_a_second_ctrl_c_while_exit_waits_for_a_compile_thread_aborts_at_once():
    """After the first Ctrl-C stopped the run, the interpreter's exit joins a thread still compiling (the
    ahead-of-time compiles, ``train/ahead.py``): a second Ctrl-C there ends the process, not a
    KeyboardInterrupt traceback from the atexit hook while the join goes on."""
    script = textwrap.dedent(
        """
        import os, signal, threading, time
        from concurrent.futures import ThreadPoolExecutor
        from smartvlm_jax.train.signals import StopSignal
        ThreadPoolExecutor(1).submit(time.sleep, 60)  # joined when the interpreter exits
        with StopSignal() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
        assert stop.event.is_set(), "the first Ctrl-C asks for a stop"
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        print("stopped", time.time(), flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 130, done.stderr
    assert (
        done.stdout.startswith("stopped ")
        and "Ctrl-C again: aborted at once; the same command resumes" in done.stderr
    )
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    assert time.time() - float(done.stdout.split()[1]) < 10  # not the 60 s of the thread


def test_a_sweep_stopped_while_writing_its_shared_data_exits_cleanly(tmp_path, monkeypatch):
    """SIGTERM while the sweep writes the puzzles every row shares: it returns, naming no row, and leaves
    no half-written data; the handlers it installed are gone again."""
    from configs import paper
    from smartvlm_jax import sweep
    from smartvlm_jax.data import synthetic

    write_dataset = synthetic.write_dataset

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # to this process: the sweep's own handler takes it
        return write_dataset(*args, **kwargs)

    monkeypatch.setattr(synthetic, "write_dataset", signalled)
    config = paper.get_config("smoke")
    config.synthetic.per_puzzle, config.data.data_tot = 4, 4
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert sweep.run_sweep(config, tmp_path) == {"stopped_at_step": 0, "row": None}
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    assert not (tmp_path / "inputs" / "synthetic").exists() and not (tmp_path / "config.json").exists()


def _leave_an_unfinished_save(checkpoints, step: int):
    """What a second Ctrl-C (or SIGKILL) during a save leaves: the save's temporary folder, half written."""
    tmp = checkpoints / f"{step}.orbax-checkpoint-tmp-1765000000000000"
    shutil.copytree(
        checkpoints / str(max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())), tmp
    )
    (tmp / "commit_success.txt").unlink(missing_ok=True)
    shutil.rmtree(tmp / "state")
    return tmp


def test_a_save_left_unfinished_is_removed_and_the_last_complete_one_restored(tmp_path):
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from smartvlm_jax.train import checkpointer

    manager = ocp.CheckpointManager(tmp_path, options=checkpointer.manager_options(2), item_names=("state",))
    manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": jnp.arange(4.0)})))
    manager.wait_until_finished()
    manager.close()
    left = _leave_an_unfinished_save(tmp_path, 4)
    again = ocp.CheckpointManager(tmp_path, options=checkpointer.manager_options(2), item_names=("state",))
    assert again.latest_step() == 3
    target = ocp.args.Composite(state=ocp.args.StandardRestore({"w": jnp.zeros(4)}))
    assert again.restore(3, args=target)["state"]["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    again.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave({"w": jnp.ones(4)})))
    again.wait_until_finished()
    again.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3", "4"] and not left.exists()


@pytest.mark.slow
def test_a_run_resumes_past_a_save_a_second_ctrl_c_left_unfinished(reference, tmp_path):
    workdir, results = reference
    moved = tmp_path / "run"
    shutil.copytree(workdir, moved, ignore=shutil.ignore_patterns("evaluations", ".lock", "results.json"))
    left = _leave_an_unfinished_save(moved / "checkpoints", results["steps"] + 1)
    resumed = train.train_and_evaluate(run_config(), moved)
    assert (resumed["test"]["S_acc"], resumed["steps"]) == (results["test"]["S_acc"], results["steps"])
    assert not left.exists()
