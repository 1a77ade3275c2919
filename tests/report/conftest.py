"""Fixtures of the report tests: the hostile report and a shared headless Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest

from chromium import Browser, missing_browser
from report_inputs import hostile_diagnosis

from dpodiag.report import write_report


@pytest.fixture(scope="session")
def hostile_report(tmp_path_factory) -> Path:
    """The HTML report of the two hostile runs."""
    folder = tmp_path_factory.mktemp("hostile")
    return write_report(hostile_diagnosis(folder), folder / "report.html")


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium shared by the browser tests; skips them when it is not installed."""
    reason = missing_browser()
    if reason:
        pytest.skip(reason)
    instance = Browser(width=1280, height=1000)
    yield instance
    instance.close()
