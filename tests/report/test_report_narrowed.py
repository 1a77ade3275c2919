"""The report reads only PAIR_COLUMNS_READ of the pair tables: narrowed tables give the same page."""

import re

import pytest

import dpodiag
from dpodiag.report import PAIR_COLUMNS_READ
from dpodiag.report.page import render_html
from report_inputs import hostile_logs
from synthetic import SAMPLE_LOGS

GENERATED = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC")


def _page(paths, **options) -> str:
    diagnosis = dpodiag.diagnose(dpodiag.load(paths, defer=True), device="cpu", **options)
    return GENERATED.sub("", render_html(diagnosis))


def test_hostile_logs_page_unchanged(tmp_path):
    paths = hostile_logs(tmp_path)
    assert _page(paths, keep_columns=PAIR_COLUMNS_READ) == _page(paths)


@pytest.mark.parametrize("name", ["healthy", "padding-in-logps", "reference-tracks-policy", "nan-step"])
def test_sample_log_page_unchanged(name):
    paths = [SAMPLE_LOGS / f"{name}.parquet"]
    assert _page(paths, keep_columns=PAIR_COLUMNS_READ) == _page(paths)


def test_narrowed_pairs_keep_listed_columns(tmp_path):
    diagnosis = dpodiag.diagnose(dpodiag.load(hostile_logs(tmp_path)), device="cpu",
                                 keep_columns=PAIR_COLUMNS_READ)
    for data in diagnosis.runs:
        assert set(data.pairs.columns) <= set(PAIR_COLUMNS_READ)
        assert {"step", "split", "margin", "probability"} <= set(data.pairs.columns)
        assert data.run.table.height == 0
        assert data.run.rows > 0
