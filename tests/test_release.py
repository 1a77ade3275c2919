"""`dpodiag check`'s low-memory path: runs read one at a time and released once checked."""

from __future__ import annotations

import polars as pl
from polars.testing import assert_frame_equal

import dpodiag
from dpodiag.pipeline import run_summary
from synthetic import make_pairs, write_parquet


def _three_runs(tmp_path):
    frames = [make_pairs(steps=12, pairs=16, eval_every=4, seed=seed).with_columns(run=pl.lit(f"run-{seed}"))
              for seed in range(3)]
    # The last run's loss was computed with another beta, so its findings differ from the others'.
    frames[2] = make_pairs(steps=12, pairs=16, eval_every=4, seed=2, loss_beta=0.3).with_columns(run=pl.lit("run-2"))
    return write_parquet(pl.concat(frames), tmp_path / "runs.parquet", beta=0.1, loss_type="sigmoid")


def test_deferred_runs_read_on_materialise(tmp_path):
    runs = dpodiag.load(_three_runs(tmp_path), defer=True)
    assert [run.name for run in runs] == ["run-0", "run-1", "run-2"]
    assert all(isinstance(run.table, pl.LazyFrame) and not run.streaming for run in runs)
    eager = dpodiag.load(_three_runs(tmp_path))
    for deferred, read in zip(runs, eager):
        deferred.materialise()
        assert isinstance(deferred.table, pl.DataFrame)
        assert_frame_equal(deferred.table, read.table)


def test_released_diagnosis_matches(tmp_path):
    path = _three_runs(tmp_path)
    kept = dpodiag.diagnose(dpodiag.load(path))
    released = dpodiag.diagnose(dpodiag.load(path, defer=True), keep_pairs=False)
    assert [run_summary(d.run) for d in released.runs] == [run_summary(d.run) for d in kept.runs]
    assert [f.to_dict() for f in released.findings] == [f.to_dict() for f in kept.findings]
    assert "beta-mismatch" in {f.code for f in released.findings}
    for data in released.runs:
        assert data.pairs is None
        assert data.run.table.height == 0
        assert data.steps.height > 0


def test_release_keeps_run_summary(tmp_path):
    run = dpodiag.load(_three_runs(tmp_path))[0]
    before = run_summary(run)
    run.release_table()
    assert run_summary(run) == before
    assert run.table.columns == dpodiag.load(_three_runs(tmp_path))[0].table.columns
