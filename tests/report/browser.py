"""Headless Chromium driven by Selenium, for the report pages' tests and screenshots.

Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them): ``/usr/bin/chromium`` and
``/usr/bin/chromedriver``; ``CHROMIUM`` and ``CHROMEDRIVER`` name others. The flags keep Chromium off the
network (no component updates, sync or background requests), which a closed network would otherwise see
flooded; each browser gets a fresh profile directory.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def missing() -> str:
    """Why no browser can run here ("" when one can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements-dev.txt)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (apt-get install -y chromium chromium-driver)"
    return ""


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator:
    """A Selenium WebDriver on headless Chromium, its console log kept (``driver.get_log("browser")``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="smartvlm_chromium_")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path: str | os.PathLike) -> None:
    """Load a page from disk (``file://``) and wait for its scripts to have run."""
    driver.get(pathlib.Path(path).absolute().as_uri())
    driver.execute_script("return document.readyState")


def console_errors(driver) -> list[dict]:
    """The browser console's entries at level SEVERE (script errors, failed loads) since the last call."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def screenshot(driver, path: str | os.PathLike, full_height: bool = True, max_height: int = 6000) -> None:
    """A PNG of the page from its top; ``full_height``: the window first grows to the page's height (up to
    ``max_height`` pixels)."""
    if full_height:
        height = driver.execute_script("return document.documentElement.scrollHeight")
        width = driver.get_window_size()["width"]
        driver.set_window_size(width, min(int(height) + 120, max_height))
    driver.execute_script("window.scrollTo(0, 0)")  # a click scrolls its element into view
    driver.save_screenshot(str(path))
