"""Headless Debian Chromium driven by selenium, with browser and DevTools performance logs on."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Requests to these schemes stay on this machine; a request to any other URL counts as network.
LOCAL_SCHEMES = ("file:", "data:", "blob:")


def missing_browser() -> str | None:
    """Return why the browser tests cannot run, or None when Chromium and its driver are installed."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} is missing (apt-get install {package})"
    return None


class Browser:
    """A headless Chromium with a fresh profile, closed (profile removed) by `close`."""

    def __init__(self, width: int = 1280, height: int = 2400):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="dpodiag-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--no-first-run", f"--user-data-dir={self.profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        # An explicit driver path keeps Selenium Manager from looking for, or downloading, a driver.
        self.driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)

    def open(self, path: Path, timeout: float = 60.0) -> None:
        """Open `path` over file:// and wait until every chart is drawn or drawing failed."""
        from selenium.webdriver.support.ui import WebDriverWait

        # The new-tab page that Chromium opens first loads chrome:// resources. Leaving it and
        # dropping its log entries keeps only the report's own requests in the logs.
        self.driver.get("about:blank")
        self.driver.get_log("performance")
        self.driver.get_log("browser")
        self.driver.get(path.resolve().as_uri())
        WebDriverWait(self.driver, timeout).until(lambda d: d.execute_script(
            "return document.body.dataset.chartsReady === 'true'"
            " || document.querySelector('.plot.failed') !== null"))

    def console_errors(self) -> list[str]:
        """Return the browser console entries of level SEVERE since the last call."""
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]

    def requested_urls(self) -> list[str]:
        """Return every URL the page asked for since the last call (DevTools Network.requestWillBeSent)."""
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
        return urls

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)
