"""The main job end to end on synthetic puzzles and tiny towers: metrics, resume, devices, caching, errors.

Every run here uses the same small config (11 synthetic puzzles x 30 instances, batch 16, 3 epochs), so
runs that differ only in how they execute (devices, feature cache, interruption) must agree.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import smoke
from smartvlm_jax import features, parallel, reasoner, reports, train
from smartvlm_jax.data import smart101
from smartvlm_jax.train import checkpointer as checkpointer_lib
from smartvlm_jax.train import inputs as inputs_lib
from smartvlm_jax.workdir import Workdir
from tests.support.runs import (
    OVERRIDES,
    REPO,
    copy_features,
    losses,
    reusing,
    run_config,
    wait_for_checkpoint,
)
from tests.support.summary import summary_paths


@pytest.mark.slow
def test_end_to_end_run_writes_results_and_learns(reference):
    workdir, results = reference
    saved = reports.load_results(workdir)
    test = saved["test"]
    for key in ("S_acc", "O_acc", "err", "per_puzzle", "per_skill", "greedy_S_acc", "chance_S_acc"):
        assert key in test
    assert test["n"] == sum(v["n"] for v in test["per_puzzle"].values()) == 11 * 6
    assert results["test"]["S_acc"] == pytest.approx(test["S_acc"])
    assert (workdir / "test_per_puzzle.png").stat().st_size > 1000
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    steps = losses(workdir)
    assert sorted(steps) == list(range(1, 3 * 13 + 1))  # 198 train rows / 16 -> 13 steps per epoch
    assert np.mean(list(steps.values())[-5:]) < np.mean(list(steps.values())[:5])
    _, variables, cfg = reasoner.load(workdir)
    assert cfg.vision_dim == 64 and cfg.text_dim == 32  # tiny towers: 2 x 32-d vision, 32-d text
    assert len(saved["val"]["per_puzzle"]) == 11 and saved["best_epoch"] >= 1
    assert json.loads((workdir / "config.json").read_text())["towers"]["dinov2"].endswith("towers/dinov2")


@pytest.mark.slow
def test_results_time_every_stage(reference):
    workdir, results = reference
    timing = reports.load_results(workdir)["timing"]
    assert timing == json.loads(json.dumps(results["timing"]))
    stages = ("dataset", "towers", "compile/train_step", "compile/eval_step", "train", "eval", "checkpoint")
    for stage in (*stages, "plots", "features/train", "features/val", "features/test"):
        assert timing[stage]["seconds"] > 0, stage
    assert timing["features/train"]["samples"] == 198 and timing["features/train"]["samples_per_s"] > 0
    assert timing["train"]["steps"] == 39 and timing["train"]["steps_per_s"] > 0
    assert timing["checkpoint"]["saves"] >= 3  # every epoch end at least
    assert timing["peak_rss_kib"] > 100 * 1024


@pytest.mark.slow
def test_curves_summary_and_the_families_own_names(reference):
    """curves.png, a closing summary whose paths all exist, the synthetic families' own names and
    stand-in skills in the table (every puzzle in one skill group), what XLA compiled."""
    workdir, results = reference
    curves = Workdir(workdir).curves
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and curves.stat().st_size > 10000
    summary = reports.format_summary(results, workdir)
    assert summary.startswith(f"best epoch {results['best_epoch']} of 3 (val S_acc ")
    paths = summary_paths(summary)
    assert Workdir(workdir).curves in paths and Workdir(workdir).tensorboard in paths
    assert all(p.exists() for p in paths), paths
    info = smart101.read_puzzle_info(workdir / "synthetic")
    names = {p: i.name for p, i in info.items()}
    table = reports.format_table(results["test"], {p: i.type for p, i in info.items()}, names)
    assert "| puzzle 1 (which icon is drawn; spatial) | 6 |" in table
    assert "| puzzle 18 (bar heights, left to right; measure) | 6 |" in table
    test = results["test"]
    assert "path" not in test["per_skill"] and test["per_other_type"] == {}
    assert sum(r["num_puzzles"] for r in test["per_skill"].values()) == 11
    # The session's cache is shared: tests that ran before with the same shapes (the feature store's and
    # the members' use this config) may have compiled some of these programs already.
    assert results["xla"]["compiled"] + results["xla"]["loaded"] >= 3
    assert results["xla"]["cache_dir"] == os.environ["JAX_COMPILATION_CACHE_DIR"]


@pytest.mark.slow
def test_a_second_run_compiles_nothing_it_compiled_before(reference, tmp_path):
    """With the persistent compilation cache (on by default), a rerun of the reference's config loads
    every executable the first run compiled. (The features are copied: XLA:CPU cannot store the fp32
    towers' forward, whose oneDNN fusions it cannot serialise.)"""
    workdir, _ = reference
    copy_features(workdir, tmp_path)
    again = train.train_and_evaluate(run_config(**reusing(workdir)), tmp_path)
    assert again["xla"]["compiled"] == 0, again["xla"]["compiled_names"]
    assert again["xla"]["loaded"] >= 3  # init, train step, predict step at least


def test_compile_cache_directory_and_opt_out(tmp_path):
    default = os.environ["JAX_COMPILATION_CACHE_DIR"]
    assert smoke.get_config().compile_cache_dir == default  # the config's default honours JAX's variable
    try:
        assert parallel.enable_compile_cache(str(tmp_path / "a" / "b")) == tmp_path / "a" / "b"
        assert (tmp_path / "a" / "b").is_dir() and jax.config.jax_enable_compilation_cache
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0  # every executable is kept
        assert parallel.enable_compile_cache("") is None  # --config.compile_cache_dir='' turns it off
        assert not jax.config.jax_enable_compilation_cache
        jax.jit(lambda x: x * 3)(1.0)  # compiles, writes nothing
        assert list((tmp_path / "a" / "b").iterdir()) == []
        with pytest.raises(OSError, match="config.compile_cache_dir"):
            parallel.enable_compile_cache("/proc/no/such/dir")
    finally:
        parallel.enable_compile_cache(default)


@pytest.mark.slow
def test_one_device_equals_eight(reference, tmp_path):
    workdir, results = reference
    copy_features(workdir, tmp_path)
    # the reference ran on one device (tests.support.runs.OVERRIDES); this one on the session's eight
    eight = train.train_and_evaluate(run_config(**reusing(workdir), **{"mesh.num_devices": 8}), tmp_path)
    ref, sharded = losses(workdir), losses(tmp_path)
    assert ref.keys() == sharded.keys()
    np.testing.assert_allclose(list(sharded.values()), list(ref.values()), atol=1e-5, rtol=0)
    assert eight["test"]["S_acc"] == results["test"]["S_acc"]
    assert eight["test"]["O_acc"] == results["test"]["O_acc"]


@pytest.mark.slow
def test_uncached_equals_cached(reference, tmp_path):
    workdir, results = reference
    uncached = train.train_and_evaluate(run_config(**reusing(workdir), cache_features=False), tmp_path)
    assert not (tmp_path / "features").exists() and not (tmp_path / "features.json").exists()
    np.testing.assert_allclose(list(losses(tmp_path).values()), list(losses(workdir).values()), atol=1e-5)
    assert uncached["test"]["S_acc"] == results["test"]["S_acc"]
    assert uncached["test"]["per_puzzle"] == results["test"]["per_puzzle"]


@pytest.mark.slow
def test_resumed_run_logs_the_windows_of_the_uninterrupted_one(reference, tmp_path):
    """Logged train/loss averages fixed windows of log_every_steps: a run stopped at step 7 (its checkpoint
    holds the window's step 7) and resumed logs at steps 9 and 12 what an uninterrupted run logs."""
    workdir, _ = reference
    extra = {**reusing(workdir), "log_every_steps": 3, "checkpoint_every_steps": 100}
    full, cut = tmp_path / "full", tmp_path / "cut"
    for run_dir in (full, cut):
        copy_features(workdir, run_dir)
    train.train_and_evaluate(run_config(**extra, max_steps=12), full)
    train.train_and_evaluate(run_config(**extra, max_steps=7), cut)
    assert sorted(losses(cut)) == [3, 6, 7]  # the last, partial window is logged too
    train.train_and_evaluate(run_config(**extra, max_steps=12), cut)
    uninterrupted, resumed = losses(full), losses(cut)
    assert sorted(uninterrupted) == [3, 6, 9, 12]
    for step in (3, 6, 9, 12):
        assert resumed[step] == pytest.approx(uninterrupted[step], abs=1e-6), step


def _checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    return sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit())


def _saved_encoder_rows(workdir: pathlib.Path, step: int) -> int:
    """The rows of the ``im_encoder`` stack in a train checkpoint (its first kernel's leading axis)."""
    import orbax.checkpoint as ocp

    meta = ocp.StandardCheckpointer().metadata(workdir / "checkpoints" / str(step) / "state")
    tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
    return jax.tree.leaves(tree["params"]["im_encoder"])[0].shape[0]


@pytest.mark.slow
def test_checkpoints_hold_the_run_rows_and_resume_from_the_full_layout(reference, tmp_path, monkeypatch):
    """With the row-sparse optimiser a checkpoint holds the run's 11 image-encoder rows, not 102, and its
    meta says so. A checkpoint of all 102 rows (what runs wrote before, and what the dense optimiser
    writes) still resumes, and the run then ends exactly as the uninterrupted one; a run whose rows differ
    from the checkpoint's is refused, naming them."""
    workdir, results = reference
    copy_features(workdir, tmp_path)
    config = run_config(**reusing(workdir))
    with monkeypatch.context() as patched:  # the run of an older version: checkpoints of every row
        patched.setattr(checkpointer_lib, "checkpoint_rows", lambda cfg, opt_state: None)
        train.train_and_evaluate(run_config(**reusing(workdir), max_steps=7), tmp_path)
    assert _saved_encoder_rows(tmp_path, 7) == 102
    resumed = train.train_and_evaluate(config, tmp_path)
    assert _saved_encoder_rows(tmp_path, max(_checkpoint_steps(tmp_path))) == 11
    np.testing.assert_allclose(
        [losses(tmp_path)[s] for s in sorted(losses(workdir))], list(losses(workdir).values()), atol=1e-6
    )
    assert resumed["test"] == results["test"]
    with monkeypatch.context() as patched, pytest.raises(ValueError, match=r"image-encoder rows \[1, 3, 7"):
        patched.setattr(checkpointer_lib, "checkpoint_rows", lambda cfg, opt_state: None)
        train.train_and_evaluate(config, tmp_path)


@pytest.mark.slow
def test_routine_saves_wait_for_the_minimum_interval(reference, tmp_path):
    """checkpoint_min_interval_secs: no routine save (epoch ends, every 5 steps) within it of the last,
    but the last step still saves; 0 saves at every one."""
    workdir, _ = reference
    for interval, expected in ((3600.0, [20]), (0.0, [15, 20])):
        run_dir = tmp_path / str(interval)
        copy_features(workdir, run_dir)
        config = run_config(**reusing(workdir), max_steps=20, checkpoint_min_interval_secs=interval)
        results = train.train_and_evaluate(config, run_dir)
        assert _checkpoint_steps(run_dir) == expected  # keep_checkpoints=2 of 5, 10, 13, 15, 20
        assert results["timing"]["checkpoint"]["saves"] == (1 if interval else 5)
    with pytest.raises(ValueError, match="checkpoint_min_interval_secs=-1"):
        train.check_config(run_config(checkpoint_min_interval_secs=-1))


@pytest.mark.slow
def test_sigterm_saves_and_sigkill_resumes_to_the_same_result(reference, tmp_path):
    """SIGTERM: save and exit 0. SIGKILL: the rerun resumes and ends exactly as a run never interrupted."""
    workdir, results = reference
    cmd = [
        sys.executable,
        "-m",
        "smartvlm_jax.main",
        "--config",
        "configs/smoke.py",
        "--workdir",
        str(tmp_path),
        *[f"--config.{k}={v}" for k, v in {**OVERRIDES, **reusing(workdir)}.items()],
        "--config.cache_features=False",  # slower steps: a window to interrupt in
    ]
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        # The three launches run the same program: later ones load its compiled executables from disk.
        "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }

    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for_checkpoint(tmp_path, first)
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out.decode()[-3000:]
    assert b"SIGTERM: saving step" in out
    stopped = max(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit())
    assert any((tmp_path / "jax_cache").iterdir())
    assert stopped < 39 and not (tmp_path / "results.json").exists()

    second = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for_checkpoint(tmp_path, second, after=stopped)
    second.kill()
    second.communicate(timeout=60)
    assert second.returncode == -signal.SIGKILL
    assert not (tmp_path / "results.json").exists()

    third = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=300)
    assert third.returncode == 0, third.stdout.decode()[-3000:] + third.stderr.decode()[-3000:]
    assert b"resumed from" in third.stderr + third.stdout
    assert_plain_console(third.stdout.decode(), third.stderr.decode(), tmp_path)
    resumed = reports.load_results(tmp_path)["test"]
    assert resumed["S_acc"] == results["test"]["S_acc"]
    assert resumed["O_acc"] == results["test"]["O_acc"]
    assert resumed["err"] == pytest.approx(results["test"]["err"], abs=1e-9)
    np.testing.assert_allclose(list(losses(tmp_path).values()), list(losses(workdir).values()), atol=1e-5)


def assert_plain_console(stdout: str, stderr: str, workdir: pathlib.Path) -> None:
    """The console of main when it is not a terminal (here: pipes): plain lines, no bar debris, none of
    the libraries' noise (which run.log holds), and a closing summary whose paths exist."""
    for text in (stdout, stderr):
        assert "\r" not in text and "\x1b[" not in text, text[-2000:]
    for noise in ("Unable to initialize backend", "Load dataset info", "Downloading and preparing"):
        assert noise not in stderr, noise
    assert not re.search(r"^[IWE]\d{4} \d\d:\d\d", stderr, re.M)  # absl's prefixes
    assert re.search(r"^epoch 3/3: \d+ steps in [\d.]+ s .*; loss [\d.]+, val S_acc ", stderr, re.M), stderr
    summary = stdout[stdout.index("best epoch ") :]
    paths = summary_paths(summary)
    assert Workdir(workdir).run_log() in paths and all(p.exists() for p in paths), summary
    assert "Load dataset info" in Workdir(workdir).run_log().read_text()  # TFDS's lines: the log file's


@pytest.mark.slow
def test_evaluate_cli_reproduces_the_test_metrics(reference):
    """evaluate writes its own results and plots under evaluations/<split>/ and never the training's."""
    workdir, results = reference
    record = ("config.json", "results.json", "features.json", "test_per_puzzle.png")
    before = {name: (workdir / name).read_bytes() for name in record}
    out = subprocess.run(
        [sys.executable, "-m", "smartvlm_jax.evaluate", "--workdir", str(workdir), "--split", "test"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| **all** |" in out.stdout
    written = workdir / "evaluations" / "test"
    assert f"written: {written / 'results.json'}" in out.stdout
    assert reports.load_results(written)["test"]["S_acc"] == results["test"]["S_acc"]
    assert (written / "test_per_puzzle.png").is_file()
    assert {name: (workdir / name).read_bytes() for name in record} == before


@pytest.mark.slow
def test_evaluate_a_read_only_workdir(reference, tmp_path, monkeypatch):
    """A workdir this user may not write (simulated: the tests run as root, whom no mode bit stops) is
    refused in one line naming --out, and evaluated with --out elsewhere, its files untouched."""
    workdir, results = reference
    frozen = tmp_path / "frozen"
    shutil.copytree(workdir, frozen, ignore=shutil.ignore_patterns("checkpoints", "evaluations", ".lock"))
    before = {p: p.read_bytes() for p in frozen.rglob("*") if p.is_file()}
    access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode) and not str(p).startswith(str(frozen)))
    with pytest.raises(PermissionError) as refused:
        train.evaluate_workdir(frozen)
    assert str(refused.value) == (
        f"evaluate's output folder {str(frozen / 'evaluations' / 'test')!r}: {frozen} is not writable: "
        "choose another folder with --out"
    )
    done = train.evaluate_workdir(frozen, out=tmp_path / "out")
    assert done["S_acc"] == results["test"]["S_acc"]
    assert reports.load_results(tmp_path / "out")["test"]["S_acc"] == results["test"]["S_acc"]
    assert {p: p.read_bytes() for p in frozen.rglob("*") if p.is_file()} == before


def test_a_file_as_workdir_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    for module, config in (
        ("smartvlm_jax.main", "configs/smoke.py"),
        ("smartvlm_jax.sweep", "configs/paper.py:smoke"),
    ):
        cmd = [sys.executable, "-m", module, "--config", config, "--workdir", str(tmp_path / "file")]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert out.returncode == 1 and out.stderr.strip() == (
            f"error: --workdir {str(tmp_path / 'file')!r}: {tmp_path / 'file'} is a file, not a folder"
        ), out.stderr[-2000:]


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"towers.tiny": False, "towers.dinov2": "/no/such/dir"}, "config.towers.dinov2"),
        ({"batch_size": 12, "mesh.num_devices": 8}, "config.batch_size"),
        ({"model.variant": "clip"}, "config.model.variant"),
        ({"optim.name": "sgd"}, "config.optim.name"),
        ({"mesh.fsdp": 3}, "config.mesh.fsdp"),
        ({"synthetic.puzzles": "1,102"}, "config.synthetic.puzzles"),
        ({"data.split_type": "puzle"}, "config.data.split_type"),
        ({"model.head": "foo"}, "config.model.head='foo' is not one of"),
        ({"optim.lr": float("nan")}, "config.optim.lr=nan must be a finite number"),
        ({"data.ratio": (60, 20)}, "config.data.ratio=(60, 20) must be three percentages"),
    ],
)
def test_bad_config_fails_before_any_work(tmp_path, extra, field):
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(field)):
        train.train_and_evaluate(run_config(**extra), tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written: no data, towers or checkpoints


@pytest.mark.slow
def test_absent_puzzle_id_names_the_field(reference, tmp_path):
    workdir, _ = reference
    config = run_config(**reusing(workdir))
    config.data.puzzle_ids = "1,2,3"
    with pytest.raises(ValueError, match=r"config\.data\.puzzle_ids.*\[2\]"):
        train.train_and_evaluate(config, tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_nan_loss_stops_with_step_and_checkpoint(reference, tmp_path):
    workdir, _ = reference
    copy_features(workdir, tmp_path)
    config = run_config(**reusing(workdir))
    config.optim.lr = 1e38
    config.optim.warmup_steps = 1
    with pytest.raises(FloatingPointError, match=r"at step \d+; last good checkpoint: "):
        train.train_and_evaluate(config, tmp_path)


class Killed(Exception):
    pass


@pytest.mark.slow
def test_killed_feature_extraction_resumes_without_decoding_what_it_holds(reference, tmp_path, monkeypatch):
    """An extraction killed part-way is completed from its first missing shard: the pipeline is asked to
    start there, and the finished cache (one memmapped .npy per field) equals an uninterrupted one."""
    workdir, _ = reference
    config = run_config(**reusing(workdir), feature_shard_batches=2, feature_store=str(tmp_path / "store"))
    killed = train.setup(config, tmp_path)
    image_batches = inputs_lib.image_batches

    def dying(run, towers, split, **kwargs):  # killed while decoding batch 5 of the train split (7 of 32)
        for i, batch in enumerate(image_batches(run, towers, split, **kwargs)):
            if i == 5:
                raise Killed
            yield batch

    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr(inputs_lib, "image_batches", dying)
        train.prepare_inputs(killed)
    entry = killed.feature_plans["train"].entry
    (train_dir,) = entry.glob("extracting-*")  # the columns' partial files and shard markers
    assert sorted(p.name for p in train_dir.glob("shard_*")) == ["shard_00000.npy", "shard_00001.npy"]
    assert not (train_dir / "done.json").exists() and not list(entry.glob("vision-*.npy"))

    resumed = train.setup(config, tmp_path)
    starts, towers_used = [], []

    def recording(run, towers, split, **kwargs):
        starts.append((split, kwargs.get("start_batch", 0)))
        towers_used.append(towers)
        return image_batches(run, towers, split, **kwargs)

    monkeypatch.setattr(inputs_lib, "image_batches", recording)
    inputs = train.prepare_inputs(resumed)
    assert starts == [("train", 4), ("val", 0), ("test", 0)]  # shards 0 and 1 hold batches 0-3
    frozen = towers_used[0]  # the run's towers, one object for every split
    assert all(t is frozen for t in towers_used)
    assert frozen.jitted_columns._cache_size() == 1  # one compilation serves all three splits
    assert not train_dir.exists()  # markers and partial files gone, the columns renamed into the entry
    for split, cache in inputs.caches.items():
        uninterrupted = features.read_recorded(workdir, split)
        assert cache.keys() == uninterrupted.keys() >= {"vision", "text", "labels", "puzzle_ids"}
        for key, value in cache.items():
            for column in value if key == "vision" else (value,):
                assert isinstance(column, np.memmap) and column.mode == "r", (split, key)
            got = np.concatenate(value, axis=-1) if key == "vision" else value
            np.testing.assert_array_equal(got, uninterrupted[key], err_msg=f"{split}/{key}")


@pytest.mark.slow
def test_float16_feature_cache_trains_like_float32(reference, tmp_path):
    """float16 storage: the cached values are float16(the float32 cache's values), batches reach the step
    as float32, and the losses stay within 2e-3 of the float32 run's."""
    workdir, results = reference
    half = train.train_and_evaluate(run_config(**reusing(workdir), feature_dtype="float16"), tmp_path)
    for split in train.SPLITS:
        cache = features.read_recorded(tmp_path, split)
        full = features.read_recorded(workdir, split)
        for key in ("vision", "text"):
            assert cache[key].dtype == np.float16, (split, key)
            np.testing.assert_array_equal(cache[key], full[key].astype(np.float16))
        np.testing.assert_array_equal(cache["labels"], full["labels"])
    text_file = lambda wd: pathlib.Path(
        (r := json.loads((wd / "features.json").read_text())["splits"]["train"])["entry"], r["text"] + ".npy"
    )
    assert text_file(tmp_path).stat().st_size < text_file(workdir).stat().st_size
    ref, low = losses(workdir), losses(tmp_path)
    assert ref.keys() == low.keys()
    np.testing.assert_allclose(list(low.values()), list(ref.values()), atol=2e-3, rtol=0)
    assert abs(half["test"]["S_acc"] - results["test"]["S_acc"]) <= 2 / 66


@pytest.mark.slow
def test_a_moved_workdir_is_evaluated_resumed_and_answers(reference, tmp_path):
    """config.json stores the paths inside the workdir relative to it: a copy elsewhere (mtimes kept, as
    mv and cp -a keep them) evaluates, predicts and resumes on its own files; a path recorded outside
    that has moved is named with the flag that gives its new place."""
    workdir, results = reference
    moved = tmp_path / "moved run"
    shutil.copytree(workdir, moved, ignore=shutil.ignore_patterns("evaluations", ".lock"))
    recorded = json.loads((moved / "config.json").read_text())
    assert (recorded["data"]["root"], recorded["towers"]["dinov2"]) == ("synthetic", "towers/dinov2")
    assert str(workdir) not in (moved / "config.json").read_text()
    evaluated = train.evaluate_workdir(moved)
    assert evaluated["S_acc"] == results["test"]["S_acc"]
    assert all(str(p).startswith(str(moved)) for p in evaluated["written"])
    resumed = train.train_and_evaluate(run_config(), moved)  # the last checkpoint: only the test runs
    assert resumed["test"]["S_acc"] == results["test"]["S_acc"] and resumed["steps"] == results["steps"]

    outside = tmp_path / "towers elsewhere"
    shutil.copytree(workdir / "towers", outside, copy_function=shutil.copy2)
    recorded = json.loads((moved / "config.json").read_text())
    recorded["towers"].update(tiny=False, dinov2=str(outside / "dinov2"), siglip=str(outside / "siglip"))
    (moved / "config.json").write_text(json.dumps(recorded))
    outside.rename(tmp_path / "towers moved again")
    with pytest.raises(FileNotFoundError) as missing:
        train.evaluate_workdir(moved)
    assert str(missing.value) == (
        f"{moved / 'config.json'} records towers.dinov2={str(outside / 'dinov2')!r}, which is missing: "
        "give its new place with --config.towers.dinov2=PATH"
    )
    new = {f"towers.{n}": str(tmp_path / "towers moved again" / n) for n in ("dinov2", "siglip")}
    assert train.evaluate_workdir(moved, paths=new)["S_acc"] == results["test"]["S_acc"]


def test_seeds_outside_32_bits_are_refused_naming_the_flag():
    """The train state's key is made from an int32 seed inside the initialiser's program."""
    train.check_config(run_config(seed=2**31 - 1))
    with pytest.raises(ValueError, match=r"--config.seed=2147483648 must fit in 32 bits"):
        train.check_config(run_config(seed=2**31))
    with pytest.raises(ValueError, match=r"Member 'big': seed=-2147483649 must fit in 32 bits"):
        train.check_members(run_config(), [train.Member("big", -(2**31) - 1)])


@pytest.mark.slow
def test_changed_towers_are_refused_and_changed_data_is_named(reference, tmp_path, capsys, caplog):
    """sources.json: the run's data root and towers by digest, its best model's towers too. Towers whose
    contents changed are refused (evaluate, predict, resume) naming both directories, unless allowed;
    predict --split names a moved data root with evaluate's flag, and changed data in one warning."""
    from smartvlm_jax import predict, sources
    from smartvlm_jax.inference import Predictor

    workdir, results = reference
    recorded = sources.read(workdir)
    assert recorded["towers.siglip"]["digest"] == sources.tower_digest(workdir / "towers" / "siglip")
    ids = json.loads((workdir / "config.json").read_text())["data"]["puzzle_ids"]
    assert recorded["data.root"]["digest"] == sources.data_digest(workdir / "synthetic", ids)
    assert sources.read(workdir / "best_model") == sources.towers_only(recorded)

    moved = tmp_path / "run"
    shutil.copytree(workdir, moved, ignore=shutil.ignore_patterns("evaluations", ".lock"))
    outside = tmp_path / "towers"
    shutil.copytree(workdir / "towers", outside, copy_function=shutil.copy2)
    (outside / "siglip" / "notes.txt").write_text("another tower now")
    config = json.loads((moved / "config.json").read_text())
    config["towers"]["tiny"] = False  # (tiny towers are the workdir's own: no other directory is taken)
    (moved / "config.json").write_text(json.dumps(config))
    towers = {n: str(outside / n) for n in ("dinov2", "siglip")}
    paths = {f"towers.{n}": d for n, d in towers.items()}
    digests = (
        f"digest {sources.tower_digest(outside / 'siglip')[:12]}, recorded "
        f"{recorded['towers.siglip']['digest'][:12]} in {moved / 'sources.json'}"
    )
    with pytest.raises(sources.SourceChangedError) as refused:
        train.evaluate_workdir(moved, paths=paths)
    assert str(refused.value) == (
        f"towers.siglip {outside / 'siglip'} holds other contents than the tower the run was trained with, "
        f"{moved / 'towers' / 'siglip'} ({digests}); give its new place with --config.FIELD=PATH, or "
        "evaluate anyway with --allow-other-towers"
    )
    with pytest.raises(
        sources.SourceChangedError, match="; give the tower the run was trained with, or train"
    ):
        train.train_and_evaluate(run_config(**{**reusing(moved), **paths}), moved)
    with pytest.raises(sources.SourceChangedError) as refused:
        Predictor.load(moved, towers=towers)
    assert str(refused.value).startswith(f"{moved / 'best_model'} was trained with towers.siglip ")
    assert f"but {outside / 'siglip'} holds other contents" in str(refused.value)
    assert (
        predict.main(
            ["--checkpoint", str(moved), "--split", "test", *(f"--config.{f}={d}" for f, d in paths.items())]
        )
        == 1
    )
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("; pass the towers it was trained with, or --allow-other-towers")
    )
    evaluated = train.evaluate_workdir(moved, paths=paths, allow_other_towers=True)  # (the same weights)
    assert evaluated["S_acc"] == results["test"]["S_acc"]

    data = tmp_path / "data"
    shutil.copytree(moved / "synthetic", data, copy_function=shutil.copy2)
    config["data"]["root"] = str(data)
    (moved / "config.json").write_text(json.dumps(config))
    data.rename(tmp_path / "data moved")
    capsys.readouterr()
    assert predict.main(["--checkpoint", str(moved), "--split", "test"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {moved / 'config.json'} records data.root={str(data)!r}, which is missing: give its new "
        "place with --config.data.root=PATH"
    )
    image = next((tmp_path / "data moved" / "1" / "img").iterdir())
    os.utime(image, ns=(0, 0))
    caplog.clear()
    assert (
        predict.main(
            ["--checkpoint", str(moved), "--split", "test", f"--config.data.root={tmp_path / 'data moved'}"]
        )
        == 0
    )
    assert f"S_acc {100 * results['test']['S_acc']:.2f}%" in capsys.readouterr().out
    assert [m for m in caplog.messages if "data.root" in m] == [
        f"data.root {tmp_path / 'data moved'}: its rows or images changed since the run read them "
        f"(digest {sources.data_digest(tmp_path / 'data moved', ids)[:12]}, recorded "
        f"{recorded['data.root']['digest'][:12]} in {moved / 'sources.json'}); "
        "the metrics are of the rows as they are now"
    ]


def test_the_head_is_ready_to_compile_before_the_tiny_towers_are_written(tmp_path):
    """``setup(head_ready=)`` hands over the run once the head's shapes are known (``train.ahead`` starts
    compiling there): before the tiny towers exist, with the head config, model and tower directories of
    the finished set-up; only the towers' digests and the feature plans come later."""
    seen = {}

    def ready(planned: train.Run) -> None:
        seen["towers written"] = Workdir(tmp_path).towers.exists()
        seen["run"] = planned

    config = run_config(**{"synthetic.per_puzzle": 10, "data.data_tot": 10})
    run = train.setup(config, tmp_path, head_ready=ready)
    planned = seen["run"]
    assert seen["towers written"] is False and Workdir(tmp_path).towers.is_dir()
    assert planned.model_cfg.to_dict() == run.model_cfg.to_dict()
    assert (planned.model_cfg.vision_dim, planned.model_cfg.text_dim) == features.variant_dims(
        run.towers_cfg, config.model.variant
    )  # the tiny towers' configs gave the widths their written config files hold
    assert planned.towers_cfg.to_dict() == run.towers_cfg.to_dict()
    assert not planned.sources and not planned.feature_plans
    assert run.sources and run.feature_plans
