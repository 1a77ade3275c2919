"""Wording of the loss-fit findings: declared against assumed settings, and the scale."""

from __future__ import annotations

import polars as pl

import dpodiag
from synthetic import SAMPLE_LOGS, write_parquet


def scale_finding(tmp_path, factor: float, with_metadata: bool, flags: dict | None = None):
    """The loss-scale finding of the healthy sample with its loss times `factor`, read from a
    parquet file with its metadata, or from a CSV (no metadata) with `flags`."""
    frame = pl.read_parquet(SAMPLE_LOGS / "healthy.parquet").with_columns(pl.col("loss") * factor)
    if with_metadata:
        path = write_parquet(frame, tmp_path / "scaled.parquet", beta=0.1, loss_type="sigmoid")
    else:
        path = tmp_path / "scaled.csv"
        frame.write_csv(path)
    diagnosis = dpodiag.diagnose(dpodiag.load(path, flags=flags), device="cpu")
    (finding,) = [f for f in diagnosis.findings if f.code == "loss-scale-mismatch"]
    return finding


def test_defaults_are_called_assumed(tmp_path):
    message = scale_finding(tmp_path, 2.0, with_metadata=False).message
    assert "against the assumed default sigmoid at beta 0.1" in message


def test_declared_settings_are_called_declared(tmp_path):
    message = scale_finding(tmp_path, 2.0, with_metadata=True).message
    assert "against the declared sigmoid at beta 0.1" in message


def test_flags_are_called_given(tmp_path):
    message = scale_finding(tmp_path, 2.0, with_metadata=False, flags={"loss_type": "sigmoid"}).message
    assert "against the given sigmoid at the assumed default beta 0.1" in message


def test_scale_below_one_names_the_divisor(tmp_path):
    message = scale_finding(tmp_path, 0.25, with_metadata=True).message
    assert "k = 0.25 (about 1/4)" in message


def test_scale_above_one_has_no_divisor(tmp_path):
    message = scale_finding(tmp_path, 2.0, with_metadata=True).message
    assert "k = 2." in message
    assert "about 1/" not in message


def test_flag_beta_called_given():
    runs = dpodiag.load(SAMPLE_LOGS / "healthy.parquet", flags={"beta": 0.5})
    (finding,) = [f for f in dpodiag.diagnose(runs, device="cpu").findings if f.code == "beta-mismatch"]
    assert "against the declared sigmoid at the given beta 0.5" in finding.message
    assert "different beta from the given one" in finding.message
