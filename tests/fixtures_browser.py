"""Browser fixtures: headless Chromium from Debian's `chromium` + `chromium-driver` (make browser), driven by
Selenium. A missing browser skips locally and fails under CI=true (ci_skip.missing)."""

from __future__ import annotations

import os
import shutil

import pytest

from ci_skip import missing


def find_chromium() -> tuple[str | None, str | None]:
    """(browser, driver) paths: $INFANTINO_CHROMIUM / $INFANTINO_CHROMEDRIVER, else Debian's."""
    browser = os.environ.get("INFANTINO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("INFANTINO_CHROMEDRIVER") or shutil.which("chromedriver")
    ok = lambda p: p if p and os.path.isfile(p) and os.access(p, os.X_OK) else None  # noqa: E731
    return ok(browser), ok(driver)


@pytest.fixture()
def chrome():
    """A headless Chromium (1280x1500 window) under Selenium; quit at teardown."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium is not installed (pip install -e '.[test]')")
    browser, driver = find_chromium()
    if browser is None or driver is None:
        missing("Chromium or its driver is not installed (Debian packages 'chromium' and 'chromium-driver'; "
                "`make browser` installs them)")
    opts = Options()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1500", "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    yield d
    d.quit()
