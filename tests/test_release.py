"""`dpodiag check`'s low-memory path: runs read one at a time (the next on another thread) and
released once checked."""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import dpodiag
from dpodiag.errors import InputError
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


def test_interleaved_runs_read_alike(tmp_path):
    # Rows of two runs alternating by step are not one block per run, so each run is read with
    # a filter. The same rows in run order are read as slices. Both give the same tables.
    first = make_pairs(steps=6, pairs=4, seed=0).with_columns(run=pl.lit("a"))
    second = make_pairs(steps=6, pairs=4, seed=1).with_columns(run=pl.lit("b"))
    blocks = write_parquet(pl.concat([first, second]), tmp_path / "blocks.parquet", beta=0.1)
    interleaved = write_parquet(pl.concat([first, second]).sort("step", maintain_order=True),
                                tmp_path / "interleaved.parquet", beta=0.1)
    for defer in (False, True):
        by_block = dpodiag.load(blocks, defer=defer)
        by_filter = dpodiag.load(interleaved, defer=defer)
        assert [run.name for run in by_filter] == [run.name for run in by_block] == ["a", "b"]
        for left, right in zip(by_block, by_filter):
            left.materialise()
            right.materialise()
            assert_frame_equal(left.table.sort("step", "example_id"), right.table.sort("step", "example_id"))


def test_rows_without_run_name_join_default_run(tmp_path):
    named = make_pairs(steps=4, pairs=4, seed=0).with_columns(run=pl.lit("other"))
    unnamed = make_pairs(steps=4, pairs=4, seed=1).with_columns(run=pl.lit(None, dtype=pl.Utf8))
    path = write_parquet(pl.concat([named, unnamed]), tmp_path / "mixed.parquet", beta=0.1)
    runs = {run.name: run for run in dpodiag.load(path, defer=True)}
    assert set(runs) == {"mixed", "other"}
    runs["mixed"].materialise()
    assert runs["mixed"].table.height == unnamed.height


def test_single_run_file_deferred(tmp_path):
    # A file without a run column is one run; with defer it is read on materialise, into the
    # table that an eager read gives.
    path = write_parquet(make_pairs(steps=8, pairs=8, seed=3), tmp_path / "one.parquet", beta=0.1)
    deferred, = dpodiag.load(path, defer=True)
    assert isinstance(deferred.table, pl.LazyFrame) and not deferred.streaming
    eager, = dpodiag.load(path)
    assert isinstance(eager.table, pl.DataFrame)
    deferred.materialise()
    assert_frame_equal(deferred.table, eager.table)


def test_read_ahead_gives_the_materialised_table(tmp_path):
    path = _three_runs(tmp_path)
    ahead, direct = dpodiag.load(path, defer=True), dpodiag.load(path, defer=True)
    for run in ahead:
        run.read_ahead()
        run.read_ahead()  # a second call does not start another read
    for left, right in zip(ahead, direct):
        left.materialise()
        right.materialise()
        assert left.pending is None
        assert_frame_equal(left.table, right.table)


def test_read_ahead_error_is_raised_by_materialise(tmp_path):
    # The log is removed after its read was planned, so the read fails on the reading thread;
    # materialise raises that error, naming the file.
    path = _three_runs(tmp_path)
    run = dpodiag.load(path, defer=True)[0]
    path.unlink()
    run.read_ahead()
    with pytest.raises(InputError, match="runs.parquet"):
        run.materialise()


def test_reading_a_log_does_not_import_torch(tmp_path):
    # Reading is free of torch, so `check` reads the first run while torch imports, and
    # `inspect` and `convert` never wait for it.
    path = write_parquet(make_pairs(steps=4, pairs=4, seed=0), tmp_path / "log.parquet", beta=0.1)
    script = ("import sys, dpodiag; run, = dpodiag.load(sys.argv[1], defer=True); run.read_ahead(); "
              "run.materialise(); print(run.table.height, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    assert result.stdout.split() == [str(make_pairs(steps=4, pairs=4, seed=0).height), "False"]


def test_public_api_listed_by_dir():
    assert {"load", "diagnose", "write_report"} <= set(dir(dpodiag))
    assert all(callable(getattr(dpodiag, name)) for name in ("load", "diagnose", "write_report"))
