"""The report tests' workdirs, made once per session: the session's smoke run (``smoke_run``,
tests/conftest.py) with its page, and the sweep whose pages they read (``paper_sweep``); a browser."""

import os
import pathlib

import pytest

from smartvlm_jax import report
from tests.report import browser


@pytest.fixture(scope="session")
def smoke_run(smoke_run) -> pathlib.Path:
    """The session's smoke run (tests/conftest.py: 88 test instances, more than a gallery page) with its
    report.html."""
    report.write_run_page(smoke_run)
    return smoke_run


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
