"""Multi-process training through launch/local.sh, and the launch scripts' command lines.

The multi-process tests run real jobs: 2 processes x 2 CPU devices joined by JAX's coordinator on a free
port, against 1 process x 4 devices on the same synthetic smoke data, dropout on: each process reads its
contiguous block of every global batch, so the assembled batch (and its dropout masks) is the 1-process
one. Every subprocess runs under a timeout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
HEARTBEAT_S = 10
# Small enough for a few minutes on 2 shared cores; 66 train rows -> 9 steps an epoch at batch 8.
RUN_ARGS = [
    "--config",
    "configs/smoke.py",
    "--config.synthetic.per_puzzle=10",
    "--config.data.data_tot=10",
    "--config.batch_size=8",
    "--config.eval_batch_size=16",
    "--config.num_epochs=20",  # fixes the learning-rate schedule; runs stop earlier through max_steps
    "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=2",
    "--config.checkpoint_min_interval_secs=0",
    f"--config.distributed.heartbeat_timeout_s={HEARTBEAT_S}",
    "--config.distributed.initialization_timeout_s=120",
]
RUN_TIMEOUT_S = 420
REF_STEPS = 12
STEPS_PER_EPOCH = 9  # ceil(66 train rows / 8)


def _env(cache_dir: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # pytest's 8 devices are not the launched runs' business
    env.update(
        JAX_PLATFORMS="cpu",
        PYTHON=sys.executable,
        # Launches of the same program share compiled executables (the resumed run recompiles nothing).
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
    return env


def _losses(workdir: pathlib.Path) -> dict[int, float]:
    """step -> train loss from the run's log.jsonl (appended to by every leg of a resumed run)."""
    out: dict[int, float] = {}
    log = workdir / "log.jsonl"
    for line in log.read_text().splitlines() if log.exists() else []:
        rec = json.loads(line)
        if "train/loss" in rec:
            assert rec["step"] not in out, f"step {rec['step']} logged twice: the run did not resume"
            out[rec["step"]] = rec["train/loss"]
    return out


def _local(n: int, workdir: pathlib.Path, *extra: str, log_dir: pathlib.Path) -> list[str]:
    return [
        str(LAUNCH / "local.sh"),
        "-n",
        str(n),
        "--log-dir",
        str(log_dir),
        "--",
        *RUN_ARGS,
        "--workdir",
        str(workdir),
        *extra,
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 1-process x 4-device reference run of REF_STEPS steps, and a 2-process run stopped by SIGTERM.

    The two are independent, so they run side by side: much of a short run is waiting (barriers, I/O).
    The launcher passes SIGTERM on to both processes; they must agree on one step, checkpoint it and exit 0.
    """
    base = tmp_path_factory.mktemp("launch")
    env = _env(base / "jax_cache")
    ref, multi = base / "ref", base / "multi"
    ref_env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    ref_cmd = [sys.executable, "-m", "smartvlm_jax.main", *RUN_ARGS, "--workdir", str(ref)]
    ref_cmd.append(f"--config.max_steps={REF_STEPS}")
    with open(base / "ref.log", "w") as ref_log:
        ref_proc = subprocess.Popen(ref_cmd, cwd=ROOT, env=ref_env, stdout=ref_log, stderr=subprocess.STDOUT)
        leg1 = _launch(_local(2, multi, log_dir=base / "leg1"), env)
        try:
            _wait_for(lambda: max(_losses(multi), default=0) >= 2, leg1.proc, RUN_TIMEOUT_S, "step 2")
            leg1.proc.send_signal(signal.SIGTERM)
            out, _ = leg1.proc.communicate(timeout=RUN_TIMEOUT_S)
            ref_rc = ref_proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if ref_proc.poll() is None:
                ref_proc.kill()
                ref_proc.wait()
            if leg1.proc.poll() is None:
                _stop(leg1)
    assert ref_rc == 0, (base / "ref.log").read_text()[-5000:]
    assert leg1.proc.returncode == 0 and _statuses(out) == {"0": "0", "1": "0"}, out + _logs(base / "leg1")
    stopped_at = max(_losses(multi))
    assert _finished_steps(multi / "checkpoints")[-1] == stopped_at
    assert stopped_at + 2 <= REF_STEPS, f"SIGTERM landed late (step {stopped_at}); raise REF_STEPS"
    return {"base": base, "env": env, "ref": ref, "multi": multi, "stopped_at": stopped_at}


@dataclasses.dataclass
class Launch:
    proc: subprocess.Popen
    pids: dict[int, int]


def _launch(cmd: list[str], env: dict[str, str]) -> Launch:
    """Start launch/local.sh and read the pids it prints first."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    pids: dict[int, int] = {}
    while len(pids) < 2:
        line = proc.stdout.readline()
        assert line, "launcher ended before printing its pids"
        match = re.match(r"local\.sh: process (\d) pid (\d+)", line)
        if match:
            pids[int(match[1])] = int(match[2])
    return Launch(proc, pids)


def _stop(launch: Launch) -> None:
    """Kill a launch that is still running, trainers included (SIGKILL to bash does not reach them)."""
    for pid in [launch.proc.pid, *launch.pids.values()]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    launch.proc.wait()


def _statuses(out: str) -> dict[str, str]:
    return dict(re.findall(r"local\.sh: process (\d) \(pid \d+\) exited with status (\d+)", out))


def _logs(log_dir: pathlib.Path) -> str:
    return "".join(f"\n== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(log_dir.glob("*.log")))


def _finished_steps(ckpt_dir: pathlib.Path) -> list[int]:
    """Checkpoint steps Orbax has finalised (a save in flight lives in a temporary directory)."""
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _wait_for(predicate, proc: subprocess.Popen, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the launch exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_two_processes_match_one_resume_and_fail_fast(runs):
    """2 x 2 devices gives 1 x 4's losses, resumes on the next batch, and a dead peer ends the job."""
    ref, multi, base, k = runs["ref"], runs["multi"], runs["base"], runs["stopped_at"]
    ref_losses = _losses(ref)
    assert sorted(ref_losses) == list(range(1, REF_STEPS + 1))

    # Second leg: resumes after step k and keeps training until one of its processes is killed.
    leg2 = _launch(_local(2, multi, log_dir=base / "leg2"), runs["env"])
    try:

        def trained_past_a_checkpoint() -> bool:
            return max(_losses(multi)) >= k + 2 and _finished_steps(multi / "checkpoints")[-1] > k

        _wait_for(trained_past_a_checkpoint, leg2.proc, RUN_TIMEOUT_S, f"step {k + 2} and a checkpoint")
        os.kill(leg2.pids[1], signal.SIGKILL)
        killed_at = time.monotonic()
        out, _ = leg2.proc.communicate(timeout=HEARTBEAT_S * 6)
        survivor_s = time.monotonic() - killed_at
    finally:
        if leg2.proc.poll() is None:
            _stop(leg2)

    # The resumed leg continued on the exact next batch: every step matches the 1-process run.
    losses = _losses(multi)
    assert sorted(losses)[: k + 2] == list(range(1, k + 3))
    for step in range(1, k + 3):
        assert abs(losses[step] - ref_losses[step]) < 1e-5, (step, losses[step], ref_losses[step])

    # The survivor exited on its own, non-zero, within the heartbeat timeout (plus slack for a busy host).
    assert leg2.proc.returncode != 0
    status = _statuses(out)
    assert status.get("1") == str(128 + signal.SIGKILL) and status.get("0") not in (None, "0"), out
    assert survivor_s < HEARTBEAT_S * 5, survivor_s
    # Before JAX's own abort text, the survivor's log said whom it waits for and how long.
    whole = "".join(p.read_text() for p in sorted((base / "leg2").glob("*.log")))
    expected = (
        r"JAX distributed: process 0 of 2, coordinator 127\.0\.0\.1:\d+; waiting up to \d+ s for "
        rf"every process to join; a peer silent for {HEARTBEAT_S} s"
    )
    assert re.search(expected, whole), _logs(base / "leg2")

    # The last finalised checkpoint is whole: it restores here (1 process), at its step, finite.
    last = _finished_steps(multi / "checkpoints")[-1]
    state, meta = _restore_on_one_device(multi / "checkpoints", last)
    assert int(state["step"]) == last and meta["epoch"] == last // STEPS_PER_EPOCH
    leaves = [np.asarray(x) for x in jax.tree.leaves(state["params"])]
    assert leaves and all(np.isfinite(x).all() for x in leaves)


def _restore_on_one_device(ckpt_dir: pathlib.Path, step: int):
    """The train state and meta of a checkpoint written by another topology, onto this process's device."""
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    with ocp.CheckpointManager(ckpt_dir, item_handlers=handlers) as manager:
        shapes = manager.item_metadata(step)["state"]
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), shapes)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
        restored = manager.restore(step, args=args)
    return restored["state"], restored["meta"]


@pytest.mark.parametrize("script", ["local.sh", "tpu.sh", "gpu_slurm.sh"])
def test_scripts_pass_shellcheck_and_help(script):
    path = LAUNCH / script
    shellcheck = shutil.which("shellcheck", path=str(pathlib.Path(sys.executable).parent)) or "shellcheck"
    check = subprocess.run([shellcheck, str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    helped = subprocess.run([str(path), "-h"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "--dry-run" in helped.stdout
    if script == "tpu.sh":  # the log the help names is the one `logs` tails
        named = re.search(r"\(log: ~/(\S+)\)", helped.stdout).group(1)
        tail = _dry_run(["launch/tpu.sh", "-z", "z", "logs"]).stdout
        assert tail.rstrip().endswith(f" {named}'"), (named, tail)
    bad = subprocess.run([str(path), "--no-such-flag"], capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "--no-such-flag" in bad.stderr


# The invocations docs/launch.md documents, as written there.
DOCUMENTED_DRY_RUNS = {
    "tpu": "launch/tpu.sh -n smartvlm -z us-central1-a -a v5litepod-8 create setup run logs -- "
    "--config configs/smoke.py --workdir workdirs/smoke",
    "tpu_pod": "launch/tpu.sh -n smartvlm-pod -z us-central1-a -a v4-32 -r tpu-ubuntu2204-base --spot "
    "--repo https://github.com/ORG/smartvlm_jax.git create setup run logs -- --config configs/smarter.py "
    "--workdir /mnt/shared/workdirs/smarter --config.data.root=/mnt/shared/SMART101-Data "
    "--config.towers.dinov2=/mnt/shared/models/dinov2-base "
    "--config.towers.siglip=/mnt/shared/models/siglip-base-patch16-224",
    "tpu_stop": "launch/tpu.sh -n smartvlm-pod -z us-central1-a stop delete",
    "slurm": "launch/gpu_slurm.sh -N 2 -g 8 -p gpu --repo /shared/smartvlm_jax -- "
    "--config configs/smarter.py --workdir /shared/workdirs/smarter --config.data.root=/shared/SMART101-Data "
    "--config.towers.dinov2=/shared/models/dinov2-base "
    "--config.towers.siglip=/shared/models/siglip-base-patch16-224",
    "local": "launch/local.sh -n 2 -p 12355 -- --config configs/smoke.py --workdir workdirs/smoke2",
}


def _dry_run(argv: list[str], expect_rc: int = 0) -> subprocess.CompletedProcess:
    # --dry-run goes first: whatever follows "--" belongs to smartvlm_jax.main.
    cmd = [argv[0], "--dry-run", *argv[1:]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == expect_rc, proc.stderr
    return proc


@pytest.mark.parametrize("name", sorted(DOCUMENTED_DRY_RUNS))
def test_docs_show_what_the_dry_runs_print(name):
    """The documented invocation and every command its dry run prints appear in docs/launch.md verbatim."""
    readme = (ROOT / "docs" / "launch.md").read_text()
    script, rest = DOCUMENTED_DRY_RUNS[name].split(" ", 1)
    # shown with --dry-run, so a line copied from the page prints rather than calls gcloud or sbatch
    assert f"$ {script} --dry-run {rest}" in readme.splitlines()
    assert not [
        line for line in readme.splitlines() if line.startswith("$ launch/") and "--dry-run" not in line
    ]
    printed = _dry_run(shlex.split(DOCUMENTED_DRY_RUNS[name])).stdout.splitlines()
    assert printed
    missing = [line for line in printed if line not in readme.splitlines()]
    assert not missing, missing


def test_slurm_job_script_is_valid_bash_with_slurm_coordinator():
    out = _dry_run(shlex.split(DOCUMENTED_DRY_RUNS["slurm"])).stdout
    script = out.split("<<'JOB'\n", 1)[1].rsplit("JOB\n", 1)[0]
    check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in script
    assert '--config.distributed.num_processes="$SLURM_NNODES"' in script


def test_dry_runs_quote_arguments_that_need_it():
    """A MAIN_ARGS value with a space and a quote survives the remote shell and the job script intact."""
    value = "--config.data.root=/data/it's here"
    main_args = ["--", "--config", "c.py", "--workdir", "w", value]
    tpu = _dry_run(["launch/tpu.sh", "-z", "z", "run", *main_args]).stdout
    remote = shlex.split(tpu.splitlines()[-1])[-1].removeprefix("--command=")
    assert value in shlex.split(remote)
    slurm = _dry_run(["launch/gpu_slurm.sh", *main_args]).stdout
    python_line = next(line for line in slurm.splitlines() if "smartvlm_jax.main" in line)
    assert value in shlex.split(python_line.rstrip("\\ "))
    local = _dry_run(["launch/local.sh", "-n", "1", *main_args]).stdout
    assert value in shlex.split(local.splitlines()[0].rstrip("&"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["launch/local.sh", "-n", "0", "--", "--config", "c"], "-n/--processes"),
        (["launch/local.sh", "-n", "2"], "after --"),
        (["launch/gpu_slurm.sh", "-N", "two", "--", "x"], "--nodes"),
        (["launch/tpu.sh", "-z", "z", "run"], "'run' needs"),
        (["launch/tpu.sh", "-z", "z"], "no command"),
        (["launch/tpu.sh", "-z", "z", "-n", "Bad_Name", "status"], "--name"),
    ],
)
def test_bad_flags_fail_naming_the_flag(argv, message):
    assert message in _dry_run(argv, expect_rc=2).stderr


def test_slurm_preflight_compiles_for_the_allocation_before_sbatch(tmp_path):
    """The preflight compiles MAIN_ARGS for N hosts x G GPUs of --gpu-type before anything is queued; a run
    it refuses is never submitted; --no-preflight leaves it out."""
    main_args = ["--", "--config", "configs/smoke.py", "--workdir", "w"]
    out = _dry_run(["launch/gpu_slurm.sh", "-N", "2", "-g", "4", "--gpu-type", "h200", *main_args]).stdout
    first, second = out.splitlines()[:2]
    assert "--compile_only=gpu:h200:2x4 --compile_only_search=2" in first and "smartvlm_jax.main" in first
    assert second.startswith("mkdir -p ")
    out = _dry_run(["launch/gpu_slurm.sh", "--no-preflight", *main_args]).stdout
    assert "--compile_only" not in out and out.startswith("mkdir -p ")
    assert "--gpu-type" in _dry_run(["launch/gpu_slurm.sh", "--gpu-type", "v100", *main_args], 2).stderr
    # not a dry run: a refusing preflight stops the script before sbatch
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    refuse = bin_dir / "python"
    refuse.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/preflight_args"; exit 1\n')
    sbatch = bin_dir / "sbatch"
    sbatch.write_text('#!/bin/sh\ntouch "$(dirname "$0")/submitted"; echo 1\n')
    for script in (refuse, sbatch):
        script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(refuse)}
    cmd = ["launch/gpu_slurm.sh", "--logs", str(tmp_path / "logs"), "-N", "1", "-g", "8", *main_args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 2 and "preflight" in proc.stderr and "--no-preflight" in proc.stderr
    assert "--compile_only=gpu:h100:1x8" in (bin_dir / "preflight_args").read_text()
    assert not (bin_dir / "submitted").exists()
    proc = subprocess.run(
        [*cmd[:1], "--no-preflight", *cmd[1:]], cwd=ROOT, capture_output=True, text=True, timeout=30, env=env
    )
    assert proc.returncode == 0 and (bin_dir / "submitted").exists(), proc.stderr
