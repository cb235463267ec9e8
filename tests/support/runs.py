"""The small runs the trainer tests share (tests/train/ and the subprocesses they start).

``run_config``: the SMARTER smoke config the end-to-end runs use (11 synthetic puzzles x 30 instances, batch
16, 3 epochs); ``baseline_run_config``: the SMART baseline's (11 x 10, tiny ResNet + BERT, 1 epoch);
``MEMBERS``: the heads test_members trains at once; plus readers of a run's log and features and a wait for a
subprocess's checkpoint.
"""

import json
import pathlib
import subprocess
import time

from configs import baseline as baseline_config
from configs import smoke
from smartvlm_jax import features, train

REPO = pathlib.Path(__file__).resolve().parents[2]
OVERRIDES = {
    "synthetic.per_puzzle": 30,
    "num_epochs": 3,
    "batch_size": 16,
    "eval_batch_size": 32,
    "checkpoint_every_steps": 5,
    "checkpoint_min_interval_secs": 0.0,  # every routine save: the resume tests stop runs between them
    "log_every_steps": 1,
    # One device, as a CPU user's run has: compiling for the session's 8 simulated devices costs more than
    # these runs (test_one_device_equals_eight and the members' sharding test keep 8).
    "mesh.num_devices": 1,
}


def run_config(**extra):
    config = smoke.get_config()
    config.update_from_flattened_dict({**OVERRIDES, **extra})
    return config


def losses(workdir: pathlib.Path) -> dict[int, float]:
    """Training loss per step from the JSON-lines log (the last value wins where a resumed run repeats)."""
    out = {}
    for line in (workdir / "log.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            out[record["step"]] = record["train/loss"]
    return out


def reusing(workdir: pathlib.Path) -> dict:
    """Overrides that reuse the reference run's synthetic puzzles, built dataset and tiny towers."""
    return {
        "synthetic.enabled": False,
        "data.root": str(workdir / "synthetic"),
        "data.data_dir": str(workdir / "tfds"),
        "towers.tiny": False,
        "towers.dinov2": str(workdir / "towers" / "dinov2"),
        "towers.siglip": str(workdir / "towers" / "siglip"),
    }


def copy_features(workdir: pathlib.Path, to: pathlib.Path) -> None:
    """Reuse the reference's features: they are in the session's feature store, keyed by the same data and
    towers, so a run of them reads them (only the head run differs); this checks they are there."""
    for split in train.SPLITS:
        assert features.read_recorded(workdir, split)["labels"].shape[0] > 0


def wait_for_checkpoint(workdir: pathlib.Path, process: subprocess.Popen, after: int = 0) -> int:
    """The newest checkpoint step in ``workdir`` once one beyond ``after`` exists (polled every 50 ms).

    Raises AssertionError when ``process`` ends first or none appears within 180 s.
    """
    deadline = time.time() + 180
    while time.time() < deadline:
        ckpt = workdir / "checkpoints"
        steps = [int(d.name) for d in ckpt.iterdir() if d.name.isdigit()] if ckpt.exists() else []
        if any(s > after for s in steps):
            return max(steps)
        if process.poll() is not None:
            raise AssertionError(
                f"run ended (rc {process.returncode}) before a checkpoint after step {after}"
            )
        time.sleep(0.05)
    raise AssertionError("no checkpoint within 180 s")


# With early_stop_patience=0 the tiny learning rate's member stops at epoch 2 while the others train on.
MEMBERS = (
    train.Member("seed0", 0),
    train.Member("seed1", 1),
    train.Member("slow", 2, lr=1e-7, weight_decay=0.05, pdrop=0.1),
)


BASELINE_OVERRIDES = {
    "synthetic.enabled": True,
    "synthetic.per_puzzle": 10,
    "towers.tiny": True,
    "data.data_tot": 10,
    "mesh.num_devices": 1,  # compiling for 8 simulated devices costs more than the run
    "num_epochs": 1,
    "batch_size": 16,
    "eval_batch_size": 32,
    "checkpoint_every_steps": 100,
    "log_every_steps": 1,
    "optim.lr": 1e-3,
}


def baseline_run_config(**extra):
    config = baseline_config.get_config()
    config.update_from_flattened_dict({**BASELINE_OVERRIDES, **extra})
    return config


# The smoke sweep (configs/paper.py:smoke), smaller: 2 seeds, 11 puzzles x 30 instances, 2 epochs (its time
# is the five rows' compiles; an epoch of a row is 13 steps). Saves at each epoch's end only: a test that
# stops a sweep mid-run adds SWEEP_SAVES_OFTEN (saves do not change what a row trains).
SMALL_SWEEP = [
    "--config.seeds=2",
    "--config.synthetic.per_puzzle=30",
    "--config.data.data_tot=30",
    "--config.num_epochs=2",
    "--config.batch_size=16",
    "--config.eval_batch_size=32",
    "--config.log_every_steps=2",
    "--config.checkpoint_min_interval_secs=0",
]
SWEEP_SAVES_OFTEN = "--config.checkpoint_every_steps=4"  # a stopped row resumes mid-epoch
