"""The sweep end to end (``python -m smartvlm_jax.sweep --config configs/paper.py:smoke``, made smaller):
the table, each member's run workdir, the towers run once for every row, a rerun keeps finished rows, and
a sweep stopped by SIGTERM resumes to the same table."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from smartvlm_jax import reports
from tests.support.runs import SMALL_SWEEP, SWEEP_SAVES_OFTEN

pytestmark = pytest.mark.slow  # every test here needs the session's finished sweep (a fixture)

REPO = pathlib.Path(__file__).resolve().parents[1]
ROWS = ("smarter", "no_qf", "dinov2_only", "siglip_only", "single_image_head")


def command(workdir: pathlib.Path, store: pathlib.Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "smartvlm_jax.sweep",
        "--config",
        "configs/paper.py:smoke",
        "--workdir",
        str(workdir),
        f"--config.feature_store={store}",
        *SMALL_SWEEP,
        *extra,
    ]


def sweep(workdir: pathlib.Path, store: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        command(workdir, store, *extra), cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_table_rows_members_and_outputs(paper_sweep):
    workdir, _, done = paper_sweep
    table = (workdir / "table.md").read_text()
    assert table.startswith("# Test accuracy (%), mean ± std over 2 seeds")
    for part in ("## S_acc %", "## O_acc %"):
        section = table[table.index(part) :].split("\n\n", 2)[1].splitlines()
        labels = [line.split(" | ")[0].removeprefix("| ") for line in section[2:]]
        assert labels == [*ROWS, "greedy", "chance"], section
        header = section[0]
        assert header == "| row | seeds | all | counting | math | logic | measure | spatial | pattern |"
        assert all(" ± " in line and line.split(" | ")[1] == "2" for line in section[2:7])
    assert table in done.stdout  # the console shows the table
    assert "5 rows x 2 members in" in done.stdout
    for name in ("table.csv", "table.png", "sweep.json", "config.json", "run.log"):
        assert (workdir / name).is_file(), name
    for row in ROWS:
        for seed in (0, 1):
            member = workdir / row / f"seed_{seed}"
            results = reports.load_results(member)
            assert results["test"]["n"] == 11 * 6 and (member / "best_model").is_dir()
            config = json.loads((member / "config.json").read_text())
            assert config["seed"] == seed and config["data_seed"] == 0  # seeds share the data order
    # the table's mean is the members' mean
    s = [reports.load_results(workdir / "no_qf" / f"seed_{i}")["test"]["S_acc"] for i in (0, 1)]
    no_qf = next(line for line in table.splitlines() if line.startswith("| no_qf |"))
    assert no_qf.split(" | ")[2].split(" ± ")[0] == f"{100 * (s[0] + s[1]) / 2:.1f}"


def test_towers_run_once_for_every_row(paper_sweep):
    workdir, store, done = paper_sweep
    record = json.loads((workdir / "sweep.json").read_text())
    extraction = {row: record["rows"][row]["extraction_s"] for row in ROWS}
    assert extraction["smarter"] > 0
    assert all(extraction[row] == 0 for row in ROWS[1:]), extraction  # dinov2_only, siglip_only: columns
    extracted = {row: record["rows"][row]["extracted"] for row in ROWS}
    assert all(len(columns) == 3 for columns in extracted["smarter"].values())  # dinov2, siglip, text
    assert all(columns == [] for row in ROWS[1:] for columns in extracted[row].values())
    assert record["extraction_s"] == extraction["smarter"] and record["total_s"] > record["extraction_s"]
    # the rows share the data, its TFDS build and the towers
    roots = {json.loads((workdir / r / "seed_0" / "config.json").read_text())["data"]["root"] for r in ROWS}
    assert roots == {str(workdir / "inputs" / "synthetic")}


def test_rerun_keeps_the_finished_rows(paper_sweep, tmp_path):
    workdir, store, _ = paper_sweep
    table = (workdir / "table.md").read_text()
    start = time.perf_counter()
    done = sweep(workdir, store)
    assert done.stdout.count("done before, kept") == 0  # that line is an INFO log line: on stderr
    assert sum(f"{row}: done before, kept" in done.stderr for row in ROWS) == len(ROWS), done.stderr[-2000:]
    assert (workdir / "table.md").read_text() == table
    assert time.perf_counter() - start < 60


@pytest.mark.parametrize("parallel_rows", [1, 2])
def test_sigterm_then_rerun_gives_the_same_table(paper_sweep, tmp_path, parallel_rows):
    """Two rows (to keep it short), stopped once the second has a checkpoint: one after another, the first
    had finished; side by side, both stop. The rerun's rows equal the full sweep's."""
    workdir, store, _ = paper_sweep
    run = tmp_path / "run"
    rows = ("--config.rows=smarter,no_qf", f"--config.parallel_rows={parallel_rows}", SWEEP_SAVES_OFTEN)
    process = subprocess.Popen(
        command(run, store, *rows), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    checkpoints = run / "no_qf" / "checkpoints"
    deadline = time.time() + 600
    while not (checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    assert "stopped by SIGTERM" in err and not (run / "table.md").exists()
    if parallel_rows == 1:
        assert reports.load_results(run / "smarter" / "seed_0")["test"]  # the first row had finished
    assert not (run / "no_qf" / "seed_0" / "results.json").exists()
    sweep(run, store, *rows)
    resumed, full = ((d / "table.md").read_text().splitlines() for d in (run, workdir))
    assert resumed == [
        line for line in full if not line.startswith(("| dinov2_only", "| siglip_only", "| single"))
    ]
