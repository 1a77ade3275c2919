"""Per-step aggregates of a recomputed pair table, in the column names of step logs.

One row per (run, split, step). Columns shared with step logs keep their step-log names
(`loss`, `rewards_chosen`, ...), so that charts and step-level checks read both levels alike.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import polars as pl

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
KEYS = ["run", "split", "step"]
# Rows of a step-ordered table sorted by STEP_KEY at a time (see `_step_slices`).
SORT_WINDOW_ROWS = 500_000
# The integer (split, step) key of `_step_key`, a temporary column of the aggregation.
STEP_KEY = "_split_step"
# grad_weight divided by its step's maximum, a temporary column of the aggregation.
SCALED_WEIGHT = "_grad_weight_scaled"
# Rows aggregated in memory at a time when the pair table is a streamed scan. A window contains
# whole steps, so one step with more rows than this makes a larger window.
WINDOW_ROWS = 1_000_000


def _finite(column: str, finite: Collection[str] = ()) -> pl.Expr:
    """Replace NaN and Inf in the column by null, which every aggregation skips. A column in
    `finite` has no NaN or Inf and is returned as it is, which polars aggregates faster."""
    col = pl.col(column)
    return col if column in finite else pl.when(col.is_finite()).then(col)


def _mean(column: str, alias: str | None = None, finite: Collection[str] = ()) -> pl.Expr:
    """Mean over finite values only; NaN and Inf are counted separately."""
    return _finite(column, finite).mean().alias(alias or column)


def _quantiles(column: str, prefix: str, finite: Collection[str] = ()) -> list[pl.Expr]:
    col = pl.col(column) if column in finite else pl.col(column).filter(pl.col(column).is_finite())
    return [col.quantile(q, interpolation="linear").alias(f"{prefix}_q{int(q * 100):02d}")
            for q in QUANTILES]


def finite_columns(pairs: pl.DataFrame, names: Collection[str]) -> set[str]:
    """Return the float columns among `names` whose values (nulls aside) are all finite."""
    floats = [name for name in names if name in pairs.columns and pairs.schema[name].is_float()]
    if not floats:
        return set()
    checked = pairs.select(pl.col(name).is_finite().all() for name in floats).row(0)
    return {name for name, all_finite in zip(floats, checked) if all_finite}


def aggregate_expressions(columns: set[str], finite: Collection[str] = ()) -> list[pl.Expr]:
    """Build the per-step aggregations of a recomputed pair table with `columns`.

    `finite` names columns known to contain no NaN or Inf. Their aggregations skip the finiteness
    test, which gives the same values faster.
    """
    def rewards(logratio: str, alias: str) -> pl.Expr:
        value = pl.col("beta_used") * pl.col(logratio)
        if logratio not in finite:
            value = pl.when(pl.col(logratio).is_finite()).then(value)
        return value.mean().alias(alias)

    exprs: list[pl.Expr] = [
        pl.len().alias("pairs"),
        rewards("chosen_logratio", "rewards_chosen"),
        rewards("rejected_logratio", "rewards_rejected"),
        _mean("margin", "rewards_margins", finite),
        # Over finite margins only (null when none), so a NaN step shows as a gap, not a collapse.
        (_finite("margin", finite) > 0).mean().alias("rewards_accuracies"),
        _mean("chosen_logratio", "logratio_chosen", finite),
        _mean("rejected_logratio", "logratio_rejected", finite),
        _mean("loss_recomputed", finite=finite),
        _mean("probability", "probability_mean", finite),
        _mean("grad_weight", "grad_weight_mean", finite),
        _ess_fraction("grad_weight"),
        (~pl.col("margin").is_finite()).sum().alias("nonfinite_margins"),
        *_quantiles("probability", "probability", finite),
        *_quantiles("margin", "margin", finite),
    ]
    if "loss" in columns:
        exprs += [_mean("loss", finite=finite), (~pl.col("loss").is_finite()).sum().alias("nonfinite_loss")]
    if {"policy_chosen_logps", "policy_rejected_logps"} <= columns:
        exprs += [_mean("policy_chosen_logps", "logps_chosen", finite),
                  _mean("policy_rejected_logps", "logps_rejected", finite),
                  # Over pairs with finite log-probs only (null when none), like rewards_accuracies.
                  pl.when(pl.col("policy_chosen_logps").is_finite()
                          & pl.col("policy_rejected_logps").is_finite())
                  .then(pl.col("policy_chosen_logps") > pl.col("policy_rejected_logps")).mean()
                  .alias("ranking_accuracy")]
    if {"reference_chosen_logps", "reference_rejected_logps"} <= columns:
        exprs += [_mean("reference_chosen_logps", "ref_logps_chosen", finite),
                  _mean("reference_rejected_logps", "ref_logps_rejected", finite)]
    if "epoch" in columns:
        exprs.append(pl.col("epoch").max().alias("epoch"))
    return exprs


def _ess_fraction(column: str) -> pl.Expr:
    """(sum w)^2 / sum w^2 / n, with w divided by its maximum first so that tiny weights
    (margins in the hundreds) do not underflow when squared; 0 when every weight is 0.

    The divided weights are the column SCALED_WEIGHT, which `_group` adds before the group-by.
    Dividing inside the aggregation broadcasts each group's maximum, which took polars 2.1 about
    190 bytes of temporary memory per row (2.5 million rows grouped by split and step).
    """
    top = pl.col(column).max()
    scaled = pl.col(SCALED_WEIGHT)
    return (pl.when(top > 0).then(scaled.sum() ** 2 / (scaled ** 2).sum() / pl.len())
            .otherwise(0.0).alias("ess_fraction"))


def _group(pairs: pl.DataFrame, keys: list[str], exprs: list[pl.Expr]) -> pl.DataFrame:
    """Group `pairs` by `keys` and aggregate `exprs`, with SCALED_WEIGHT added first."""
    weights = pl.col("grad_weight")
    scaled = (weights / weights.max().over(keys)).alias(SCALED_WEIGHT)
    # Eager: the lazy engine runs the same query about twice as slowly, with 250 MB more
    # temporary memory per 2.5 million rows (polars 2.1).
    return pairs.with_columns(scaled).group_by(keys).agg(exprs)


def step_aggregates(pairs: pl.DataFrame | pl.LazyFrame,
                    extra: Callable[[set[str]], list[pl.Expr]] | None = None) -> pl.DataFrame:
    """Aggregate a recomputed pair table (see `recompute`) per run, split and step.

    Rewards are beta * log-ratio; `rewards_accuracies` is the share of pairs with margin > 0 and
    `ranking_accuracy` the share with c > r. `ess_fraction` is the effective sample size of the
    gradient weights, (sum w)^2 / sum w^2, divided by the number of pairs. `extra(finite)`
    returns more aggregations for the same group-by, given the set of columns without NaN or
    Inf (see `dpodiag.compute.moments`). A LazyFrame (a streamed pair table) is aggregated in
    windows of whole steps of about WINDOW_ROWS rows, because exact per-step quantiles need
    every value of the step at once.
    """
    if isinstance(pairs, pl.LazyFrame):
        return _windowed_aggregates(pairs, extra)
    finite = finite_columns(pairs, pairs.columns)
    exprs = aggregate_expressions(set(pairs.columns), finite) + (extra(finite) if extra else [])
    key = _step_key(pairs)
    if key is None:
        return _group(pairs, KEYS, exprs).sort(KEYS)
    encoded, run, splits = key
    roots = {name for expr in exprs for name in expr.meta.root_names()} - {SCALED_WEIGHT}
    frame = pairs.select(*sorted(roots | {"step"}), encoded)
    steps = pl.concat([_group(_sorted_by_key(part), [STEP_KEY], exprs) for part in _step_slices(frame)])
    count = len(splits)
    split = (pl.col(STEP_KEY) % count).replace_strict(dict(enumerate(splits)), return_dtype=pl.Utf8)
    step = (pl.col(STEP_KEY) // count).cast(pairs.schema["step"])
    return (steps.select(pl.lit(run, dtype=pairs.schema["run"]).alias("run"), split.alias("split"),
                         step.alias("step"), pl.exclude(STEP_KEY))
            .sort(KEYS))


def _sorted_by_key(frame: pl.DataFrame) -> pl.DataFrame:
    """Order `frame` by STEP_KEY and mark the key sorted. Rows ordered by the key make every
    group a contiguous slice, which polars aggregates about three times faster than scattered
    rows. The sort is stable, so each step keeps its row order."""
    if frame.get_column(STEP_KEY).is_sorted():
        return frame.with_columns(pl.col(STEP_KEY).set_sorted())
    return frame.sort(STEP_KEY, maintain_order=True)


def _step_slices(frame: pl.DataFrame):
    """Yield `frame` in slices of whole steps of about SORT_WINDOW_ROWS rows when it is ordered
    by step, else whole. Sorting a slice then copies that slice only."""
    steps = frame.get_column("step")
    if frame.height <= SORT_WINDOW_ROWS or not steps.is_sorted():
        yield frame
        return
    start = 0
    while start < frame.height:
        # The window ends after the last row of the step at row start + SORT_WINDOW_ROWS.
        probe = min(start + SORT_WINDOW_ROWS, frame.height - 1)
        end = int(steps.search_sorted(steps[probe], side="right"))
        yield frame.slice(start, end - start)
        start = end


def _step_key(pairs: pl.DataFrame) -> tuple[pl.Expr, str, list[str]] | None:
    """Return an integer key that numbers each (split, step) of a one-run table, with the run
    name and the split names it encodes; None when the table does not allow one.

    The key is step * S + i, where i is the split's index among the S distinct split names.
    Polars groups by one integer column faster than by a string and an integer, and with far
    less temporary memory for the per-group quantiles (about 10 MB against 150 MB for 2.5
    million rows with polars 2.1). A table with several run names, a missing split or a step
    too large for the product falls back to grouping by KEYS.
    """
    if "run" not in pairs.columns or pairs.height == 0:
        return None
    run, split = pairs.get_column("run"), pairs.get_column("split")
    # One comparison with the first name is faster than a distinct count of the text column.
    if run.null_count() or split.null_count() or not (run == run[0]).all():
        return None
    # Splits are numbered in order of first appearance, so a log that writes each step's train
    # rows before its eval rows is already ordered by the key and needs no sort.
    splits = split.unique(maintain_order=True).to_list()
    low, high = pairs.get_column("step").min(), pairs.get_column("step").max()
    if max(abs(low), abs(high)) >= (1 << 62) // len(splits):
        return None
    code = pl.lit(0, dtype=pl.Int64)
    for index, name in enumerate(splits[1:], start=1):
        code = code + (pl.col("split") == name).cast(pl.Int64) * index
    encoded = (pl.col("step").cast(pl.Int64) * len(splits) + code).alias(STEP_KEY)
    return encoded, run[0], splits


def step_windows(step_counts: pl.DataFrame, window_rows: int | None = None) -> list[tuple[int, int]]:
    """Split the steps of `step_counts` (columns step, len) into ranges [first, last] of whole
    steps with at most `window_rows` (default WINDOW_ROWS) rows each, or one step when it alone
    has more."""
    window_rows = window_rows or WINDOW_ROWS
    windows: list[tuple[int, int]] = []
    first = last = None
    rows = 0
    for step, count in step_counts.sort("step").iter_rows():
        if first is not None and rows + count > window_rows:
            windows.append((first, last))
            first, rows = None, 0
        first = step if first is None else first
        last, rows = step, rows + count
    if first is not None:
        windows.append((first, last))
    return windows


def _windowed_aggregates(pairs: pl.LazyFrame, extra: Callable[[set[str]], list[pl.Expr]] | None) -> pl.DataFrame:
    columns = set(pairs.collect_schema().names())
    exprs = aggregate_expressions(columns) + (extra(set()) if extra else [])
    roots = {name for expr in exprs for name in expr.meta.root_names()} - {SCALED_WEIGHT}
    needed = sorted(set(KEYS) | roots)
    counts = pairs.group_by("step").agg(pl.len()).collect(engine="streaming")
    parts = []
    for first, last in step_windows(counts):
        window = pairs.filter(pl.col("step").is_between(first, last)).select(needed)
        parts.append(_group(window.collect(engine="streaming"), KEYS, exprs))
    if not parts:
        return _group(pairs.select(needed).collect(), KEYS, exprs)
    return pl.concat(parts).sort(KEYS)
