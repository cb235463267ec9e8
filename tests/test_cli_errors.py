"""The command-line tools answer input errors with one line, `error: ...`, and exit 1 (--traceback: more)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from smartvlm_jax import cli, predict

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["smartvlm_jax.data.build", "--data-root", "/no/such/root", "--data-dir", "/tmp/unused"],
            "error: no puzzle folders under /no/such/root",
        ),
        (["smartvlm_jax.evaluate", "--workdir", "/no/such/workdir"], "error: /no/such/workdir/config.json"),
        (
            [
                "smartvlm_jax.main",
                "--config",
                "configs/smoke.py",
                "--workdir",
                "/tmp/unused_workdir",
                "--config.towers.dtype=float8",
            ],
            "error: --config.towers.dtype='float8'",
        ),
    ],
)
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
    assert (
        _run(
            "smartvlm_jax.data.build",
            "--data-root",
            str(tmp_path / "a"),
            "--data-dir",
            str(tmp_path / "tfds"),
        ).returncode
        == 0
    )
    data_dir = str(tmp_path / "tfds")
    out = _run("smartvlm_jax.data.build", "--data-root", str(tmp_path / "b"), "--data-dir", data_dir)
    assert (
        out.returncode == 1
        and "replace it with --overwrite" in out.stderr
        and "overwrite=True" not in out.stderr
    )


def test_convert_help_lists_its_commands():
    out = _run("smartvlm_jax.convert", "--help")
    assert out.returncode == 0 and "{hf,reference}" in out.stdout and "``reference``" in out.stdout


def test_predict_counts_are_checked_by_flag():
    out = _run("smartvlm_jax.predict", "--checkpoint", "/no/such/dir", "--batch-size", "0")
    assert out.returncode == 2 and "argument --batch-size: 0 is not >= 1" in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize(
    "module, args, line",
    [
        (
            "smartvlm_jax.main",
            ["--config", "configs/smoke.py", "--config.num_epoch=3"],
            "error: --config.num_epoch: configs/smoke.py has no field num_epoch; "
            "did you mean --config.num_epochs?",
        ),
        (
            "smartvlm_jax.main",
            ["--config", "configs/smoke.py", "--config.optim.lrr", "3"],
            "error: --config.optim.lrr: configs/smoke.py has no field optim.lrr; "
            "did you mean --config.optim.lr?",
        ),
        (
            "smartvlm_jax.main",
            ["--config", "configs/smok.py"],
            f"error: --config configs/smok.py: no such file (relative to the working directory {REPO}); "
            "did you mean --config configs/smoke.py?",
        ),
        (
            "smartvlm_jax.main",
            ["--config=configs/paper.py:bogus"],
            "error: --config configs/paper.py:bogus: the argument is 'smoke' or nothing",
        ),
        (
            "smartvlm_jax.main",
            ["--config", "configs/smoke.py:nope"],
            "error: --config configs/smoke.py:nope: configs/smoke.py has no named variants (its get_config() "
            "takes no argument); use --config configs/smoke.py",
        ),
        (
            "smartvlm_jax.main",
            ["--config", "configs/smoke.py", "--config.seeds=3"],
            "error: --config.seeds is a field of smartvlm-sweep's configs, not of this command's: "
            "run smartvlm-sweep",
        ),
        (
            "smartvlm_jax.main",
            ["--config", "configs/paper.py:smoke"],
            "error: --config configs/paper.py:smoke is a config of smartvlm-sweep (it has seeds, rows, "
            "baseline, row_overrides, grid, member_plots, parallel_rows): "
            "run smartvlm-sweep --config configs/paper.py:smoke",
        ),
        (
            "smartvlm_jax.main",
            ["--config", "configs/smoke.py", "--config.num_epochs=abc"],
            "error: flag --config.num_epochs=abc: invalid literal for int() with base 10: 'abc'",
        ),
        (
            "smartvlm_jax.main",
            ["--config", "configs/smoke.py", "--config.model.variant=bogus"],
            "error: --config.model.variant='bogus' is not one of ['dinov2', 'fused', 'resnet', 'siglip']",
        ),
        (
            "smartvlm_jax.sweep",
            ["--config", "configs/paper.py:smoke", "--config.grid.lrr=0.1"],
            "error: --config.grid.lrr: configs/paper.py has no field grid.lrr; "
            "did you mean --config.grid.lr?",
        ),
        (
            "smartvlm_jax.sweep",
            ["--config", "configs/smoke.py"],
            "error: --config configs/smoke.py has no seeds, rows, baseline, row_overrides, grid, "
            "member_plots, parallel_rows: it is a run config, not a sweep config: pass configs/paper.py, "
            "or train it with smartvlm-train",
        ),
    ],
)
def test_config_mistakes_are_one_line_naming_the_flag_and_the_fix(module, args, line, tmp_path):
    workdir = tmp_path / "workdir"
    out = _run(module, *args, "--workdir", str(workdir))
    assert out.returncode == 1 and out.stderr.strip() == line, out.stderr[-3000:]
    assert not workdir.exists()  # refused before any work


def test_a_relative_config_from_another_folder_names_the_checkout_file(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "smartvlm_jax.main", "--config", "configs/smoke.py", "--workdir", "w"]
    out = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"error: --config configs/smoke.py: no such file (relative to the working directory {tmp_path}); "
        f"did you mean --config {REPO / 'configs' / 'smoke.py'}?"
    ), out.stderr[-3000:]


@pytest.mark.parametrize(
    "script, module, argv",
    [
        ("smartvlm-predict", "smartvlm_jax.predict", ["--help"]),
        ("smartvlm-evaluate", "smartvlm_jax.evaluate", ["--help"]),
        ("smartvlm-build-data", "smartvlm_jax.data.build", ["--help"]),
        ("smartvlm-convert", "smartvlm_jax.convert.__main__", ["--help"]),
        ("smartvlm-convert", "smartvlm_jax.convert.reference", ["--help"]),
    ],
)
def test_console_scripts_name_themselves_in_their_usage(script, module, argv, monkeypatch, capsys):
    import importlib

    main = importlib.import_module(module).main
    monkeypatch.setattr(sys, "argv", [f"/venv/bin/{script}", *argv])
    try:
        main(argv)
    except SystemExit:
        pass
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {script}") and "python -m" not in out.split("\n\n")[0], out[:300]
    monkeypatch.setattr(sys, "argv", [f"/x/{module.replace('.', '/')}.py", *argv])  # python -m
    try:
        main(argv)
    except SystemExit:
        pass
    command = module.removesuffix(".__main__").replace("convert.reference", "convert reference")
    assert capsys.readouterr().out.startswith(f"usage: python -m {command}")


def test_variant_errors_from_python_name_the_head_config_fields_not_flags():
    from smartvlm_jax import variants

    with pytest.raises(ValueError, match=r"^variant='bogus' is not one of \['dinov2'"):
        variants.get("bogus")
    with pytest.raises(ValueError, match=r"^variant='fused' feeds the 'smarter' head, but head='baseline'"):
        variants.check("fused", "baseline")


def test_a_value_refused_by_the_trainer_leaves_no_workdir(tmp_path):
    """Checks that run after the console opened run.log (the trainer's): the refused command removes the
    workdir it created, which holds nothing but that log."""
    workdir = tmp_path / "workdir"
    out = _run(
        "smartvlm_jax.main",
        "--config",
        "configs/smoke.py",
        "--config.batch_size=0",
        "--workdir",
        str(workdir),
    )
    assert (
        out.returncode == 1
        and out.stderr.strip().splitlines()[-1] == "error: --config.batch_size=0 must be >= 1"
    )
    assert not workdir.exists() and "run.log" not in out.stderr  # no log named that is never written


def test_a_config_argument_is_one_line_naming_the_valid_ones(tmp_path):
    """``FILE:ARG``: a config without variants says so (not Python's "takes 0 positional arguments"); one
    with variants names them; a file without get_config() is named."""
    with pytest.raises(ValueError) as plain:
        cli.load_config(f"{REPO}/configs/smoke.py:nope")
    assert str(plain.value) == (
        f"--config {REPO}/configs/smoke.py:nope: {REPO}/configs/smoke.py has no named variants "
        f"(its get_config() takes no argument); use --config {REPO}/configs/smoke.py"
    )
    with pytest.raises(ValueError, match=r"configs/paper.py:nope: the argument is 'smoke' or nothing$"):
        cli.load_config(f"{REPO}/configs/paper.py:nope")
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(ValueError) as empty:
        cli.load_config(f"{tmp_path}/empty.py")
    assert (
        str(empty.value)
        == f"--config {tmp_path}/empty.py: {tmp_path}/empty.py defines no get_config(); is it a config file?"
    )


def test_predict_takes_evaluates_moved_path_flags_and_refuses_other_arguments(capsys):
    args = predict.parse_args(["--checkpoint", "DIR", "--split", "test", "--config.data.root=/new/data"])
    assert args.paths == {"data.root": "/new/data"} and not args.allow_other_towers
    with pytest.raises(SystemExit) as refused:
        predict.parse_args(["--checkpoint", "DIR", "--bogus"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.endswith("unrecognized arguments: --bogus\n")  # nothing near it


def test_a_config_that_is_not_python_is_one_line_naming_file_and_line(tmp_path):
    """A config file with a syntax error, or whose code raises something else, is named in one line."""
    bad = tmp_path / "bad_cfg.py"
    bad.write_text("x = 1\nx = (\n")
    with pytest.raises(ValueError) as refused:
        cli.load_config(str(bad))
    assert str(refused.value).startswith(f"--config {bad}: {bad}:2: SyntaxError: ")
    raising = tmp_path / "raising_cfg.py"
    raising.write_text("def get_config():\n    return 1 / 0\n")
    with pytest.raises(ValueError) as refused:
        cli.load_config(str(raising))
    assert str(refused.value) == f"--config {raising}: {raising}:2: ZeroDivisionError: division by zero"
    keyed = tmp_path / "keyed_cfg.py"  # a KeyError's words are only the key: its type and line say what
    keyed.write_text("def get_config():\n    fields = {}\n    return fields['x']\n")
    with pytest.raises(ValueError) as refused:
        cli.load_config(str(keyed))
    assert str(refused.value) == f"--config {keyed}: {keyed}:3: KeyError: 'x'"


@pytest.mark.parametrize(
    "module, argv, says",
    [
        (
            "smartvlm_jax.report.__main__",
            ["--workdr", "w"],
            "unrecognized arguments: --workdr; did you mean --workdir?",
        ),
        (
            "smartvlm_jax.evaluate",
            ["--workdir", "w", "--spilt", "val"],
            "arguments: --spilt; did you mean --split?",
        ),
        (
            "smartvlm_jax.predict",
            ["--chekpoint", "m"],
            "unrecognized arguments: --chekpoint; did you mean --checkpoint?",
        ),
    ],
)
def test_a_mistyped_option_is_named_before_a_missing_required_one(module, argv, says, capsys):
    """argparse alone says "the following arguments are required: --workdir" for ``--workdr``."""
    import importlib

    with pytest.raises(SystemExit) as refused:
        importlib.import_module(module).main(argv)
    err = capsys.readouterr().err
    assert refused.value.code == 2 and len(err.strip().splitlines()) == 1 and err.strip().endswith(says), err


def test_a_misspelled_field_inside_a_config_file_is_one_line(tmp_path):
    """``c.num_epocs = 2`` in a config file makes a new field that nothing reads: the run would train the
    default 12 epochs without a word."""
    config = tmp_path / "typo_cfg.py"
    body = "def get_config():\n    c = smoke.get_config()\n    c.num_epocs = 2\n    return c\n"
    config.write_text(f"from configs import smoke\n\n\n{body}")
    with pytest.raises(ValueError) as refused:
        cli.check_config_flags(["--config", str(config)])
    assert (
        str(refused.value)
        == f"--config {config} sets num_epocs, which no run config has; did you mean num_epochs?"
    )
    config.write_text(config.read_text().replace("c.num_epocs = 2", "c.model.use_qff = False"))
    with pytest.raises(
        ValueError, match=r"sets model.use_qff, which no run config has; did you mean model.use_qf\?"
    ):
        cli.check_config_flags(["--config", str(config)])
    from smartvlm_jax import sweep

    cli.check_config_flags(["--config", "configs/paper.py:smoke"], needs=(sweep.SWEEP_FIELDS, ""))  # its own
