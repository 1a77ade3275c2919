"""normalisation-inferred: inferred, declared, and undecided log-prob normalisation."""

from __future__ import annotations

import polars as pl

import dpodiag
from synthetic import SAMPLE_LOGS

LOGPS = ["policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps"]


def normalisation_findings(path, **flags):
    diagnosis = dpodiag.diagnose(dpodiag.load(path, flags=flags or None), device="cpu")
    return [f for f in diagnosis.findings if f.code == "normalisation-inferred"]


def per_token_copy(tmp_path):
    """The healthy sample with every log-prob divided by its response length, as CSV."""
    frame = pl.read_parquet(SAMPLE_LOGS / "healthy.parquet")
    lengths = {c: "chosen_length" if "chosen" in c else "rejected_length" for c in LOGPS}
    frame = frame.with_columns(pl.col(c) / pl.col(length) for c, length in lengths.items())
    path = tmp_path / "per_token.csv"
    frame.write_csv(path)
    return path


def test_summed_sample_is_inferred():
    (finding,) = normalisation_findings(SAMPLE_LOGS / "healthy.parquet")
    assert finding.title == "Log-prob normalisation sum was inferred"


def test_undecided_log_says_so(tmp_path):
    (finding,) = normalisation_findings(per_token_copy(tmp_path))
    assert finding.title == "Log-prob normalisation could not be inferred"
    assert finding.evidence["undecided"] is True
    assert "read as sums" in finding.message


def test_declared_normalisation_is_silent(tmp_path):
    assert normalisation_findings(per_token_copy(tmp_path), logps_normalisation="mean") == []
