"""Chromium for the review-page tests: Debian's ``chromium`` and ``chromium-driver`` (nothing
downloads a browser of its own), headless, driven by Selenium. Where they are missing the
browser tests skip, naming the install step; ``.ci/run`` installs them on a fresh machine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"
SHOTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "ui"


def _binary(*names: str) -> str | None:
    return next((p for n in names if (p := shutil.which(n))), None)


def chromium():
    """A headless Chromium WebDriver, or a skip that says how to install one."""
    browser = _binary("chromium", "chromium-browser")
    driver = _binary("chromedriver")
    if browser is None or driver is None:
        pytest.skip(f"the browser tests need Chromium and its driver: {INSTALL}")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look online
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--no-first-run",
        "--disable-extensions",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    drv.set_page_load_timeout(60)
    return drv


def wait_for(driver, cond, timeout: float = 60):
    """``cond(driver)`` once truthy; elements replaced by a re-render meanwhile are retried."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(cond)


def screenshot(driver, name: str) -> Path:
    """Save the page as benchmarks/results/ui/<name>.png (the issue asks for one per page)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def console_errors(driver) -> list[str]:
    """Severe browser console entries (script errors, CSP violations, failed loads)."""
    try:
        logs = driver.get_log("browser")
    except Exception:
        return []
    return [e["message"] for e in logs if e.get("level") == "SEVERE"]


_UNLABELLED = """
const name = (el) => {
  if (el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')) return true;
  if (el.id && document.querySelector('label[for="' + el.id + '"]')) return true;
  if (el.closest('label')) return true;
  return el.tagName === 'BUTTON' && el.textContent.trim().length > 0;
};
return [...document.querySelectorAll('input, select, textarea, button')]
  .filter((el) => el.type !== 'hidden' && !name(el))
  .map((el) => el.outerHTML.slice(0, 120));
"""


def unlabelled_controls(driver) -> list[str]:
    """Form controls and buttons on the page with no accessible name (label, aria-label,
    or a button's text)."""
    return driver.execute_script(_UNLABELLED)
