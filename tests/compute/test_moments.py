"""Per-step statistics from the moments table against slow per-step loops over the pairs."""

import math

import numpy as np
import polars as pl
import pytest
import torch

from dpodiag.compute.moments import correlation, mask_column, step_sums, step_tables
from dpodiag.compute.quantiles import median_above, median_above_counts
from dpodiag.compute.recompute import recompute
from dpodiag.schema import Run, RunMeta
from synthetic import make_pairs

MASK_SUMS = ["mask_n", "mask_sx", "mask_sy", "mask_sxx", "mask_syy", "mask_sxy", "mask_ymin", "mask_ymax",
             "mask_count", "mask_above", "mask_infinite"]
LENGTH_SUMS = ["length_n", "length_sx", "length_sy", "length_sxx", "length_syy", "length_sxy"]


def recomputed_pairs(frame: pl.DataFrame) -> pl.DataFrame:
    run = Run("r", "mem", "pairs", frame.with_columns(run=pl.lit("r")),
              RunMeta(beta=0.2, loss_type="sigmoid"), "parquet")
    return recompute(run, torch.device("cpu"))


@pytest.fixture
def damaged():
    """Pairs with NaN and Inf log-probs, null lengths, repeated ids and a step of equal lengths."""
    frame = make_pairs(steps=8, pairs=13, eval_every=3, noise=0.5, seed=4)
    rng = np.random.default_rng(1)
    rows = frame.height
    chosen = frame.get_column("reference_chosen_logps").to_numpy().copy()
    chosen[rng.choice(rows, 6, replace=False)] = np.nan
    chosen[rng.choice(rows, 2, replace=False)] = -np.inf
    lengths = frame.get_column("rejected_length").to_numpy().copy()
    ids = frame.get_column("example_id").to_list()
    ids[5] = ids[6]  # a repeat at step 0
    frame = frame.with_columns(pl.Series("reference_chosen_logps", chosen),
                               pl.Series("rejected_length", lengths),
                               pl.Series("example_id", ids))
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) % 17 == 3).then(None).otherwise(pl.col("rejected_length")).alias("rejected_length"),
        pl.when(pl.col("step") == 2).then(20.0).otherwise(pl.col("chosen_length")).alias("chosen_length"))
    frame = frame.with_columns(pl.when(pl.col("step") == 2).then(20.0).otherwise(pl.col("rejected_length"))
                               .alias("rejected_length"))
    return recomputed_pairs(frame)


def slow_correlation(x: list[float], y: list[float]) -> float | None:
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None]
    if len(pairs) < 2:
        return None
    xs, ys = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
    if xs.std() == 0 or ys.std() == 0:
        return None
    return float(np.corrcoef(xs, ys)[0, 1])


def test_mask_correlation_matches_loop(damaged):
    column = mask_column(damaged)
    assert column == "reference_chosen_logps"
    moments = step_tables(damaged)[1]
    per_step = step_sums(moments, MASK_SUMS).with_columns(correlation("mask").alias("r"))
    assert per_step.height == damaged.get_column("step").n_unique()
    for row in per_step.iter_rows(named=True):
        part = damaged.filter(pl.col("step") == row["step"])
        sizes, lengths = [], []
        for logps, length in ((column, "chosen_length"), ("reference_rejected_logps", "rejected_length")):
            for value, n in zip(part.get_column(logps).to_list(), part.get_column(length).to_list()):
                if math.isfinite(value):
                    sizes.append(abs(value))
                    lengths.append(n)
        expected = slow_correlation(sizes, lengths)
        if row["step"] == 2:
            assert expected is None
            assert row["mask_ymin"] == 20.0
            assert row["mask_ymax"] == 20.0
        if expected is None:
            assert row["r"] is None or row["mask_ymin"] == row["mask_ymax"]
        else:
            assert row["r"] == pytest.approx(expected, rel=1e-9)
        assert row["mask_n"] == sum(n is not None for n in lengths)


def test_mask_counts_match_median(damaged):
    moments = step_tables(damaged)[1]
    counts = moments.select(pl.col("mask_count", "mask_above", "mask_infinite").sum()).row(0)
    pooled = pl.concat([
        damaged.select(pl.col("reference_chosen_logps").abs().alias("s"), pl.col("chosen_length").alias("n")),
        damaged.select(pl.col("reference_rejected_logps").abs().alias("s"), pl.col("rejected_length").alias("n")),
    ]).filter(pl.col("s").is_finite()).lazy()
    values = pooled.select((pl.col("s") / pl.col("n")).alias("v")).collect().get_column("v").drop_nulls()
    assert counts[0] == values.len()
    assert counts[1] == int((values > 30.0).sum()) + int(values.is_nan().sum())
    assert counts[2] == int(values.is_infinite().sum())
    assert median_above_counts(*counts) == median_above(pooled, pl.col("s") / pl.col("n"), 30.0)


def test_length_correlation_matches_loop(damaged):
    moments = step_tables(damaged)[1]
    per_step = step_sums(moments, LENGTH_SUMS, splits=["train"]).with_columns(correlation("length").alias("r"))
    for row in per_step.iter_rows(named=True):
        part = damaged.filter((pl.col("step") == row["step"]) & (pl.col("split") == "train"))
        margins, differences = [], []
        for m, a, b in zip(*(part.get_column(c).to_list() for c in ("margin", "chosen_length", "rejected_length"))):
            if math.isfinite(m) and a is not None and b is not None:
                margins.append(m)
                differences.append(a - b)
        expected = slow_correlation(margins, differences)
        if expected is None:
            assert row["r"] is None
        else:
            assert row["r"] == pytest.approx(expected, rel=1e-9)


def test_distinct_ids_count_repeats(damaged):
    moments = step_tables(damaged)[1]
    for row in moments.iter_rows(named=True):
        part = damaged.filter((pl.col("step") == row["step"]) & (pl.col("split") == row["split"]))
        assert row["rows"] == part.height
        assert row["ids_distinct"] == len(set(part.get_column("example_id").to_list()))
    assert (moments.get_column("ids_distinct") < moments.get_column("rows")).sum() == 1


def test_constant_values_no_correlation():
    moments = pl.DataFrame({"x_n": [4, 4, 1], "x_sx": [400.0, 10.0, 3.0], "x_sy": [10.0, 10.0, 3.0],
                            "x_sxx": [40000.0, 30.0, 9.0], "x_syy": [30.0, 30.0, 9.0],
                            "x_sxy": [1000.0, 30.0, 9.0]})
    r = moments.select(correlation("x")).to_series().to_list()
    # Row 1: x is constant (100.0); row 2: x = y = (1, 2, 3, 4) exactly; row 3: one value.
    assert r[0] is None
    assert r[1] == pytest.approx(1.0)
    assert r[2] is None


def test_streamed_moments_equal(damaged, tmp_path):
    path = tmp_path / "pairs.parquet"
    damaged.write_parquet(path)
    in_memory = step_tables(damaged)[1].sort("split", "step")
    streamed = step_tables(pl.scan_parquet(path))[1].sort("split", "step")
    assert set(in_memory.columns) == set(streamed.columns)
    for name in in_memory.columns:
        left, right = in_memory.get_column(name), streamed.get_column(name)
        if left.dtype.is_float():
            assert np.allclose(left.to_numpy(), right.to_numpy(), rtol=1e-12, equal_nan=True), name
        else:
            assert left.to_list() == right.to_list(), name
