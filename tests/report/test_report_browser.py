"""The report opened in headless Chromium: charts drawn, nothing fetched, hostile strings inert."""

from __future__ import annotations

from pathlib import Path

import pytest

from chromium import LOCAL_SCHEMES
from report_inputs import (HOSTILE_COLUMN, IMG_ONERROR, NON_ASCII, QUOTES, SCRIPT_BREAKOUT, diagnose_data,
                           step_log_run)
from synthetic import SAMPLE_LOGS

import dpodiag
from dpodiag.report import write_report

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def opened(browser, hostile_report):
    """The hostile report, open, with the console errors and URLs logged while it loaded."""
    browser.open(hostile_report)
    return {"errors": browser.console_errors(), "urls": browser.requested_urls(), "driver": browser.driver}


def script(opened, code: str):
    return opened["driver"].execute_script(code)


def test_every_chart_rendered(opened):
    plots = script(opened, "return document.querySelectorAll('.plot[data-figure]').length")
    drawn = script(opened, "return [...document.querySelectorAll('.plot[data-figure]')]"
                           ".filter(p => p.querySelector('.main-svg')).length")
    assert plots == 9
    assert drawn == plots
    assert script(opened, "return document.querySelectorAll('.plot.failed').length") == 0


def test_no_console_error(opened):
    assert opened["errors"] == []


def test_no_network_request(opened):
    remote = [url for url in opened["urls"] if not url.startswith(LOCAL_SCHEMES)]
    assert opened["urls"], "the performance log recorded no request at all"
    assert remote == []


def test_hostile_strings_run_nothing(opened):
    assert script(opened, "return typeof window.__pwned") == "undefined"
    assert script(opened, "return document.querySelectorAll('img').length") == 0


def test_hostile_strings_shown_as_text(opened):
    script(opened, "document.querySelectorAll('details').forEach(d => d.open = true)")
    text = script(opened, "return document.body.innerText")
    for value in (SCRIPT_BREAKOUT, IMG_ONERROR, QUOTES, NON_ASCII, HOSTILE_COLUMN):
        assert value in text
    assert script(opened, "return document.title").startswith(f"dpodiag report: {SCRIPT_BREAKOUT} {NON_ASCII}")


def test_hostile_run_name_in_legend(opened):
    legend = script(opened, "return [...document.querySelectorAll('#chart-loss .legendtext')]"
                            ".map(t => t.textContent)")
    assert f"{SCRIPT_BREAKOUT} {NON_ASCII}" in legend
    assert f"{IMG_ONERROR} {QUOTES}" in legend


def test_step_log_report_renders(browser, tmp_path):
    path = write_report(diagnose_data([step_log_run()]), tmp_path / "steps.html")
    browser.open(path)
    assert browser.console_errors() == []
    drawn = browser.driver.execute_script(
        "return [...document.querySelectorAll('.plot[data-figure]')].map(p => !!p.querySelector('.main-svg'))")
    assert drawn == [True] * 4


@pytest.mark.skipif(not list(SAMPLE_LOGS.glob("*.parquet")), reason="no sample logs in sample_logs/")
def test_sample_logs_render(browser, tmp_path):
    paths = sorted(SAMPLE_LOGS.glob("*.parquet"))[:5]
    path = write_report(dpodiag.diagnose(dpodiag.load(paths), device="cpu"), tmp_path / "samples.html")
    browser.open(path)
    assert browser.console_errors() == []
    assert [url for url in browser.requested_urls() if not url.startswith(LOCAL_SCHEMES)] == []
    missing = browser.driver.execute_script(
        "return [...document.querySelectorAll('.plot[data-figure]')].filter(p => !p.querySelector('.main-svg'))"
        ".map(p => p.dataset.figure)")
    assert missing == []
    assert Path(path).stat().st_size < 2_000_000
