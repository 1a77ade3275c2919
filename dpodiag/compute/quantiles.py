"""Exact medians of a column that is scanned, not held in memory.

Polars' median of a streamed column keeps every value. Here the median's order statistics are
found by counting values per bin over a few scans. A first scan counts the values and finds the
range of the finite ones. Each further scan counts the finite values in BINS equal bins of the
current range and narrows it to the bin that contains the wanted rank, until that bin contains
at most COLLECT_LIMIT values, which are collected and sorted. Memory stays at BINS counts and
COLLECT_LIMIT values, and the result is the median polars computes on the whole column.
"""

from __future__ import annotations

import math

import polars as pl

BINS = 4096
COLLECT_LIMIT = 200_000
VALUE = "value"


def median(table: pl.LazyFrame, value: pl.Expr, engine: str = "auto") -> float | None:
    """Median of `value` over the rows of `table`, nulls skipped, as polars' `median`: NaN ranks
    above +inf, and an even count gives the midpoint of the two middle values.

    With engine "streaming", the value is selected in the scans described in the module
    docstring; otherwise polars computes it directly. None when there is no value.
    """
    values = table.select(value.alias(VALUE)).filter(pl.col(VALUE).is_not_null())
    if engine != "streaming":
        return values.select(pl.col(VALUE).median()).collect(engine=engine).item()
    counts = values.select(
        pl.len().alias("count"), (pl.col(VALUE) == -math.inf).sum().alias("below"),
        pl.col(VALUE).is_finite().sum().alias("finite"),
        pl.col(VALUE).filter(pl.col(VALUE).is_finite()).min().alias("low"),
        pl.col(VALUE).filter(pl.col(VALUE).is_finite()).max().alias("high"),
    ).collect(engine=engine).row(0, named=True)
    if counts["count"] == 0:
        return None
    middle = [_order_statistic(values, rank, counts, engine)
              for rank in sorted({(counts["count"] - 1) // 2, counts["count"] // 2})]
    return pl.Series(VALUE, middle, dtype=pl.Float64).median()


def _order_statistic(values: pl.LazyFrame, rank: int, counts: dict, engine: str) -> float:
    """Return the value at 0-based `rank` in ascending order (-inf, finite values, +inf, NaN)."""
    if rank < counts["below"]:
        return -math.inf
    rank -= counts["below"]
    if rank >= counts["finite"]:
        # Above the finite values: +inf first, then NaN.
        above = values.filter(pl.col(VALUE) == math.inf).select(pl.len()).collect(engine=engine).item()
        return math.inf if rank - counts["finite"] < above else math.nan
    return _finite_order_statistic(values.filter(pl.col(VALUE).is_finite()), rank,
                                   counts["low"], counts["high"], counts["finite"], engine)


def _finite_order_statistic(finite: pl.LazyFrame, rank: int, low: float, high: float, count: int,
                            engine: str) -> float:
    """Return the value at `rank` among the finite values, all of which lie in [low, high]."""
    inside = finite.filter(pl.col(VALUE).is_between(low, high))
    while count > COLLECT_LIMIT and low < high:
        width = (high - low) / BINS
        # The last bin is closed on the right, so that `high` falls in it.
        bin_index = ((pl.col(VALUE) - low) / width).floor().clip(0, BINS - 1).cast(pl.Int64)
        per_bin = (inside.group_by(bin_index.alias("bin")).agg(pl.len().alias("n"))
                   .sort("bin").collect(engine=engine))
        cumulative = per_bin.get_column("n").cum_sum()
        position = int((cumulative <= rank).sum())
        before = int(cumulative[position - 1]) if position else 0
        chosen = int(per_bin.get_column("bin")[position])
        count, rank = int(per_bin.get_column("n")[position]), rank - before
        inside = inside.filter(bin_index == chosen)
        bounds = inside.select(pl.col(VALUE).min().alias("low"), pl.col(VALUE).max().alias("high"))
        low, high = bounds.collect(engine=engine).row(0)
    if low == high:
        return float(low)
    selected = inside.select(pl.col(VALUE).sort()).collect(engine=engine).get_column(VALUE)
    return float(selected[rank])


def median_above(table: pl.LazyFrame, value: pl.Expr, threshold: float, engine: str = "auto") -> bool | None:
    """Return whether `median(table, value)` is above `threshold` or NaN, from counts alone,
    or None when the counts do not decide it.

    With n values (nulls skipped) of which `above` are > threshold or NaN (NaN ranks highest),
    the sorted values end with the `above` ones. For odd n the median is above exactly when
    above >= (n + 1) / 2. For even n it is the midpoint of the values at ranks n/2 - 1 and n/2:
    above when above > n/2, not above when above < n/2, and undecided when above == n/2. An
    empty column is undecided too, and so is one with an infinite value, because polars
    interpolates the median as low + (high - low) * fraction, which is NaN next to an infinity.
    One counting scan replaces the median's selection.
    """
    values = table.select(value.alias(VALUE)).filter(pl.col(VALUE).is_not_null())
    # Polars orders NaN above every number, so NaN > threshold counts NaN as above.
    counts = values.select(pl.len().alias("count"), (pl.col(VALUE) > threshold).sum().alias("above"),
                           pl.col(VALUE).is_infinite().any().alias("infinite"))
    return median_above_counts(*counts.collect(engine=engine).row(0))


def median_above_counts(count: int, above: int, infinite: int) -> bool | None:
    """Decide `median_above` from its counts: `count` non-null values, of which `above` are
    above the threshold or NaN and `infinite` are infinite."""
    if count == 0 or infinite:
        return None
    if count % 2:
        return above >= (count + 1) // 2
    if above == count // 2:
        return None
    return above > count // 2
