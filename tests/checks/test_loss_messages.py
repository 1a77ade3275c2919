"""Wording of the loss-fit findings: declared against assumed settings, and the scale."""

from __future__ import annotations

import polars as pl

import dpodiag
from synthetic import SAMPLE_LOGS


def scale_finding(tmp_path, factor: float, with_metadata: bool):
    frame = pl.read_parquet(SAMPLE_LOGS / "healthy.parquet").with_columns(pl.col("loss") * factor)
    path = tmp_path / "scaled.csv"
    frame.write_csv(path)
    flags = {"beta": 0.1, "loss_type": "sigmoid"} if with_metadata else None
    diagnosis = dpodiag.diagnose(dpodiag.load(path, flags=flags), device="cpu")
    (finding,) = [f for f in diagnosis.findings if f.code == "loss-scale-mismatch"]
    return finding


def test_defaults_are_called_assumed(tmp_path):
    message = scale_finding(tmp_path, 2.0, with_metadata=False).message
    assert "against the assumed default sigmoid at beta 0.1" in message


def test_declared_settings_are_called_declared(tmp_path):
    message = scale_finding(tmp_path, 2.0, with_metadata=True).message
    assert "against the declared sigmoid at beta 0.1" in message


def test_scale_below_one_names_the_divisor(tmp_path):
    message = scale_finding(tmp_path, 0.25, with_metadata=True).message
    assert "k = 0.25 (about 1/4)" in message


def test_scale_above_one_has_no_divisor(tmp_path):
    message = scale_finding(tmp_path, 2.0, with_metadata=True).message
    assert "k = 2." in message
    assert "about 1/" not in message
