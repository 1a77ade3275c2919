"""Every registered check has a case where it fires and one where it must not, and every case
goes through the checks, the JSON output and the HTML report."""

import json

import pytest

import dpodiag
from cases import CASES
from dpodiag import formats
from dpodiag.checks import REGISTRY
from dpodiag.report.page import render_html
from synthetic import codes


def test_every_check_has_cases():
    missing = sorted(set(REGISTRY) - set(CASES))
    stub = "\n".join(f'    "{code}": (lambda: [...], lambda: [...]),' for code in missing)
    assert not missing, f"add cases to tests/checks/cases.py:\n{stub}"


@pytest.mark.parametrize("code", sorted(CASES))
def test_check_fires(code):
    diagnosis = dpodiag.diagnose(CASES[code][0](), device="cpu")
    assert code in codes(diagnosis.findings)

    # The finding survives the JSON document and appears on the page.
    document = json.loads(formats.to_json(diagnosis))
    assert code in {f["code"] for f in document["findings"]}
    assert code in render_html(diagnosis)


@pytest.mark.parametrize("code", sorted(CASES))
def test_check_silent(code):
    diagnosis = dpodiag.diagnose(CASES[code][1](), device="cpu")
    assert code not in codes(diagnosis.findings)
    json.loads(formats.to_json(diagnosis))


def test_checks_doc_is_current():
    from pathlib import Path

    from dpodiag.checks.catalogue import catalogue_markdown

    page = Path(__file__).resolve().parents[2] / "docs" / "checks.md"
    assert page.read_text() == catalogue_markdown(), (
        "docs/checks.md is stale: run python -m dpodiag.checks.catalogue > docs/checks.md")
