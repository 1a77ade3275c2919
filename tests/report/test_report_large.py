"""The size limit and the offline guarantee on a ten-million-row log of four runs plus a
sample run (five runs on one page)."""

import re
import sys
from pathlib import Path

import pytest

import dpodiag
from dpodiag.report import write_report
from synthetic import SAMPLE_LOGS

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from datagen import write_pair_log  # noqa: E402

MAX_BYTES = 2_000_000
# Attributes and CSS that would make a browser fetch something when the page opens.
NETWORK = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import""", re.I)


@pytest.fixture(scope="module")
def big_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    log = write_pair_log(folder / "pairs.parquet", rows=10_000_000)
    runs = dpodiag.load([log, SAMPLE_LOGS / "healthy.parquet"])
    return write_report(dpodiag.diagnose(runs, device="cpu"), folder / "report.html")


def test_ten_million_rows_fit_the_size_limit(big_report):
    assert big_report.stat().st_size < MAX_BYTES


def test_ten_million_rows_page_is_offline(big_report):
    html = big_report.read_text(encoding="utf-8")
    assert html.count("<script") == html.count("</script>")
    assert not NETWORK.search(html)


@pytest.mark.browser
def test_ten_million_rows_page_opens_offline(big_report, browser):
    from chromium import LOCAL_SCHEMES

    browser.open(big_report)
    assert browser.console_errors() == []
    assert [url for url in browser.requested_urls() if not url.startswith(LOCAL_SCHEMES)] == []
    drawn = browser.driver.execute_script("return document.querySelectorAll('.main-svg').length")
    assert drawn > 0
