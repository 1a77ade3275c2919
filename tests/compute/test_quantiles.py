"""The counting median test against polars' own median."""

import itertools
import math

import polars as pl
import pytest

from dpodiag.compute.quantiles import median, median_above

VALUES = [5.0, 29.0, 30.0, 31.0, 45.0, math.nan, math.inf, -math.inf, None]


def _cases():
    # Every multiset of up to four of VALUES, so odd and even counts, ties at the threshold,
    # NaN and infinities all occur.
    for size in range(5):
        yield from itertools.combinations_with_replacement(VALUES, size)


@pytest.mark.parametrize("values", list(_cases()))
def test_median_above_agrees_with_polars(values):
    table = pl.DataFrame({"v": pl.Series(list(values), dtype=pl.Float64)}).lazy()
    exact = table.select(pl.col("v").median()).collect().item()
    decided = median_above(table, pl.col("v"), 30.0)
    if exact is None:
        assert decided is None
    elif decided is not None:
        assert decided == (not exact <= 30.0)


def test_median_above_decides_plain_columns():
    table = pl.DataFrame({"v": [1.0, 2.0, 40.0, 50.0, 60.0]}).lazy()
    assert median_above(table, pl.col("v"), 30.0) is True
    assert median_above(table, pl.col("v"), 55.0) is False


def test_median_above_undecided_at_even_split():
    table = pl.DataFrame({"v": [29.0, 32.0]}).lazy()
    assert median_above(table, pl.col("v"), 30.0) is None
    assert median(table, pl.col("v")) == 30.5
