"""Small workdirs for the report tests, made once per session: a smoke run (configs/smoke.py, 4 epochs)
with its page; the sweep whose pages they read is the session's (``paper_sweep``, tests/conftest.py)."""

import os
import pathlib
import subprocess
import sys

import pytest

from smartvlm_jax import report
from tests.report import browser

REPO = pathlib.Path(__file__).resolve().parents[2]


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
