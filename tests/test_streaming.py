"""The streamed path (a log scanned in chunks, never held in memory whole) gives the same runs,
step aggregates and findings as the in-memory path."""

from __future__ import annotations

import math

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import dpodiag
from cases import CASES
from dpodiag.compute import aggregate, recompute
from dpodiag.io import budget
from dpodiag.pipeline import run_summary
from synthetic import make_pairs, write_parquet


def approx_equal(left, right) -> bool:
    """Equal, with floats compared to a relative 1e-9 (sums may add in another order)."""
    if isinstance(left, float) and isinstance(right, float):
        return (math.isnan(left) and math.isnan(right)) or math.isclose(left, right, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(approx_equal(left[k], right[k]) for k in left)
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        return len(left) == len(right) and all(approx_equal(a, b) for a, b in zip(left, right))
    return left == right


def assert_same_diagnosis(in_memory, streamed):
    assert [run_summary(d.run) for d in streamed.runs] == [run_summary(d.run) for d in in_memory.runs]
    for expected, actual in zip(in_memory.runs, streamed.runs):
        assert isinstance(actual.pairs, pl.LazyFrame)
        assert_frame_equal(expected.steps, actual.steps, check_exact=False, rel_tol=1e-9)
    key = lambda f: (f.run, f.code, f.split or "", f.step if f.step is not None else -1)
    expected, actual = sorted(in_memory.findings, key=key), sorted(streamed.findings, key=key)
    assert [f.code for f in actual] == [f.code for f in expected]
    for want, got in zip(expected, actual):
        assert (got.severity, got.run, got.split, got.step, got.title) == \
            (want.severity, want.run, want.split, want.step, want.title)
        assert got.message == want.message
        assert approx_equal(got.evidence, want.evidence), (want.code, want.evidence, got.evidence)


@pytest.fixture
def small_chunks(monkeypatch):
    """Recompute in chunks of 100 rows and aggregate in windows of 150, so that a small log
    crosses many chunk and window boundaries."""
    monkeypatch.setattr(recompute, "CPU_CHUNK_ROWS", 100)
    monkeypatch.setattr(aggregate, "WINDOW_ROWS", 150)


def mixed_log(tmp_path):
    """Three runs in one file: healthy, a loss computed with another beta, and one with a NaN
    step and records repeated by a resumed run."""
    healthy = make_pairs(steps=40, pairs=24, eval_every=10, noise=0.3).with_columns(run=pl.lit("healthy"))
    mismatch = (make_pairs(steps=40, pairs=24, eval_every=10, noise=0.3, loss_beta=0.5, seed=1)
                .with_columns(run=pl.lit("beta")))
    broken = make_pairs(steps=40, pairs=24, eval_every=10, noise=0.3, seed=2)
    broken = broken.with_columns(
        policy_chosen_logps=pl.when(pl.col("step") == 25).then(float("nan")).otherwise(pl.col("policy_chosen_logps")))
    broken = pl.concat([broken, broken.filter(pl.col("step").is_between(30, 32))]).with_columns(run=pl.lit("broken"))
    frame = pl.concat([healthy, mismatch, broken])
    return write_parquet(frame, tmp_path / "runs.parquet", beta=0.1, loss_type="sigmoid")


def test_streamed_file_matches_in_memory(tmp_path, small_chunks):
    path = mixed_log(tmp_path)
    in_memory = dpodiag.diagnose(dpodiag.load([path], streaming=False), device="cpu")
    streamed = dpodiag.diagnose(dpodiag.load([path], streaming=True), device="cpu")
    assert {f.code for f in in_memory.findings} >= {"beta-mismatch", "non-finite-values", "duplicate-steps"}
    assert_same_diagnosis(in_memory, streamed)


def test_streamed_inference_matches(tmp_path, small_chunks):
    frame = make_pairs(steps=30, pairs=32, noise=0.3, loss_beta=0.25)
    path = write_parquet(frame, tmp_path / "undeclared.parquet")
    in_memory = dpodiag.diagnose(dpodiag.load([path], streaming=False), device="cpu")
    streamed = dpodiag.diagnose(dpodiag.load([path], streaming=True), device="cpu")
    assert in_memory.runs[0].run.meta.source_of("beta") == "inferred"
    assert streamed.runs[0].run.meta.inference == in_memory.runs[0].run.meta.inference
    assert_same_diagnosis(in_memory, streamed)


@pytest.mark.parametrize("code", sorted(CASES))
@pytest.mark.parametrize("fires", [True, False])
def test_check_cases_stream_alike(code, fires, small_chunks):
    make = CASES[code][0 if fires else 1]
    runs = make()
    if all(run.level != "pairs" for run in runs):
        pytest.skip("no pair log in this case")
    streamed = make()
    for run in streamed:
        if run.level == "pairs":
            run.table = run.table.lazy()
    assert_same_diagnosis(dpodiag.diagnose(runs, device="cpu"), dpodiag.diagnose(streamed, device="cpu"))


def test_environment_forces_streaming(tmp_path, monkeypatch):
    path = write_parquet(make_pairs(steps=6), tmp_path / "small.parquet", beta=0.1, loss_type="sigmoid")
    monkeypatch.setenv(budget.STREAMING_ENV, "1")
    assert dpodiag.load([path])[0].streaming
    monkeypatch.setenv(budget.STREAMING_ENV, "0")
    assert not dpodiag.load([path])[0].streaming
    assert dpodiag.load([path], streaming=True)[0].streaming


def test_size_decides_streaming(monkeypatch):
    schema = pl.Schema({"step": pl.Int64, "policy_chosen_logps": pl.Float64})
    monkeypatch.setattr(budget, "available_memory", lambda: 10**9)
    assert not budget.should_stream(None, 1_000, schema)
    assert budget.should_stream(None, 100_000_000, schema)
    assert not budget.should_stream(False, 100_000_000, schema)
    monkeypatch.setattr(budget, "available_memory", lambda: None)
    assert not budget.should_stream(None, 100_000_000, schema)


def test_run_size_decides_deferred_streaming(monkeypatch):
    schema = pl.Schema({"step": pl.Int64, "policy_chosen_logps": pl.Float64})
    monkeypatch.setattr(budget, "available_memory", lambda: 10**10)
    assert budget.should_stream(None, 40_000_000, schema)
    assert not budget.should_stream(None, 40_000_000, schema, largest_run=10_000_000)
    assert budget.should_stream(None, 40_000_000, schema, largest_run=30_000_000)


def test_deferred_read_estimates_largest_run(tmp_path, monkeypatch):
    path = mixed_log(tmp_path)
    rows = budget.parquet_rows([path])
    schema = pl.scan_parquet(path).collect_schema()
    whole = budget.estimated_bytes(rows, schema)
    one_run = budget.estimated_bytes(rows, schema, largest_run=rows // 3 + 100)
    # Memory between the two estimates: the whole file streams, one run at a time does not.
    monkeypatch.setattr(budget, "available_memory", lambda: (whole + one_run) / 2 / budget.STREAMING_SHARE)
    assert dpodiag.load([path])[0].streaming
    assert not any(run.streaming for run in dpodiag.load([path], defer=True))
    assert all(run.streaming for run in dpodiag.load([path], defer=True, streaming=True))


def test_streamed_report_matches(tmp_path, small_chunks):
    from dpodiag.report.page import render_html

    path = mixed_log(tmp_path)
    pages = []
    for streaming in (False, True):
        diagnosis = dpodiag.diagnose(dpodiag.load([path], streaming=streaming), device="cpu")
        html = render_html(diagnosis, title="same")
        pages.append(html)
    # The generation time is left out of each page: the two renders may fall in different minutes.
    pages = ["\n".join(line for line in page.splitlines() if "UTC" not in line) for page in pages]
    assert pages[0] == pages[1]
