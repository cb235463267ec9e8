"""Small workdirs for the report tests, made once per session: a smoke run (configs/smoke.py, 4 epochs)
with its page, and the smoke sweep made small (2 rows x 2 seeds), which writes its own pages."""

import os
import pathlib
import subprocess
import sys

import pytest

from smartvlm_jax import report
from tests.report import browser
from tests.support import runs

REPO = pathlib.Path(__file__).resolve().parents[2]
SMALL_SWEEP = ["--config.rows=smarter,no_qf", *runs.SMALL_SWEEP]


def _run(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> pathlib.Path:
    """A finished smoke run (11 puzzles, 264 test instances) and its report.html."""
    root = tmp_path_factory.mktemp("report_run")
    workdir = root / "run"
    _run(
        "smartvlm_jax.main",
        "--config",
        "configs/smoke.py",
        "--workdir",
        str(workdir),
        f"--config.feature_store={root / 'store'}",
        "--config.num_epochs=4",
    )
    report.write_run_page(workdir)
    return workdir


@pytest.fixture(scope="session")
def small_sweep(tmp_path_factory) -> tuple[pathlib.Path, str]:
    """A finished small sweep (rows smarter and no_qf, 2 seeds each), which writes its pages itself; and
    its console output."""
    root = tmp_path_factory.mktemp("report_sweep")
    done = _run(
        "smartvlm_jax.sweep",
        "--config",
        "configs/paper.py:smoke",
        "--workdir",
        str(root / "run"),
        f"--config.feature_store={root / 'store'}",
        *SMALL_SWEEP,
    )
    return root / "run", done.stdout


@pytest.fixture(scope="session")
def driver():
    """Headless Chromium. Skipped where Debian's chromium and chromium-driver are absent, unless
    SMARTVLM_REQUIRE_BROWSER=1 (CI sets it: there a missing browser fails)."""
    why = browser.missing()
    if why:
        if os.environ.get("SMARTVLM_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    with browser.chromium() as d:
        yield d
