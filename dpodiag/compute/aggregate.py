"""Per-step aggregates of a recomputed pair table, in the column names of step logs.

One row per (run, split, step). Columns shared with step logs keep their step-log names
(`loss`, `rewards_chosen`, ...), so that charts and step-level checks read both levels alike.
"""

from __future__ import annotations

import polars as pl

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
KEYS = ["run", "split", "step"]
# Rows aggregated in memory at a time when the pair table is a streamed scan. A window contains
# whole steps, so one step with more rows than this makes a larger window.
WINDOW_ROWS = 1_000_000


def _finite(column: str) -> pl.Expr:
    """Replace NaN and Inf in the column by null, which every aggregation skips."""
    col = pl.col(column)
    return pl.when(col.is_finite()).then(col)


def _mean(column: str, alias: str | None = None) -> pl.Expr:
    """Mean over finite values only; NaN and Inf are counted separately."""
    return _finite(column).mean().alias(alias or column)


def _quantiles(column: str, prefix: str) -> list[pl.Expr]:
    col = pl.col(column).filter(pl.col(column).is_finite())
    return [col.quantile(q, interpolation="linear").alias(f"{prefix}_q{int(q * 100):02d}")
            for q in QUANTILES]


def aggregate_expressions(columns: set[str]) -> list[pl.Expr]:
    """Build the per-step aggregations of a recomputed pair table with `columns`."""
    exprs: list[pl.Expr] = [
        pl.len().alias("pairs"),
        pl.when(pl.col("chosen_logratio").is_finite()).then(pl.col("beta_used") * pl.col("chosen_logratio"))
        .mean().alias("rewards_chosen"),
        pl.when(pl.col("rejected_logratio").is_finite()).then(pl.col("beta_used") * pl.col("rejected_logratio"))
        .mean().alias("rewards_rejected"),
        _mean("margin", "rewards_margins"),
        # Over finite margins only (null when none), so a NaN step shows as a gap, not a collapse.
        (_finite("margin") > 0).mean().alias("rewards_accuracies"),
        _mean("chosen_logratio", "logratio_chosen"),
        _mean("rejected_logratio", "logratio_rejected"),
        _mean("loss_recomputed"),
        _mean("probability", "probability_mean"),
        _mean("grad_weight", "grad_weight_mean"),
        _ess_fraction("grad_weight"),
        (~pl.col("margin").is_finite()).sum().alias("nonfinite_margins"),
        *_quantiles("probability", "probability"),
        *_quantiles("margin", "margin"),
    ]
    if "loss" in columns:
        exprs += [_mean("loss"), (~pl.col("loss").is_finite()).sum().alias("nonfinite_loss")]
    if {"policy_chosen_logps", "policy_rejected_logps"} <= columns:
        exprs += [_mean("policy_chosen_logps", "logps_chosen"),
                  _mean("policy_rejected_logps", "logps_rejected"),
                  (pl.col("policy_chosen_logps").is_finite() & pl.col("policy_rejected_logps").is_finite()
                   & (pl.col("policy_chosen_logps") > pl.col("policy_rejected_logps"))).mean()
                  .alias("ranking_accuracy")]
    if {"reference_chosen_logps", "reference_rejected_logps"} <= columns:
        exprs += [_mean("reference_chosen_logps", "ref_logps_chosen"),
                  _mean("reference_rejected_logps", "ref_logps_rejected")]
    if "epoch" in columns:
        exprs.append(pl.col("epoch").max().alias("epoch"))
    return exprs


def _ess_fraction(column: str) -> pl.Expr:
    """(sum w)^2 / sum w^2 / n, with w divided by its maximum first so that tiny weights
    (margins in the hundreds) do not underflow when squared; 0 when every weight is 0."""
    weights = pl.col(column)
    top = weights.max()
    scaled = weights / top
    return (pl.when(top > 0).then(scaled.sum() ** 2 / (scaled ** 2).sum() / pl.len())
            .otherwise(0.0).alias("ess_fraction"))


def step_aggregates(pairs: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Aggregate a recomputed pair table (see `recompute`) per run, split and step.

    Rewards are beta * log-ratio; `rewards_accuracies` is the share of pairs with margin > 0 and
    `ranking_accuracy` the share with c > r. `ess_fraction` is the effective sample size of the
    gradient weights, (sum w)^2 / sum w^2, divided by the number of pairs. A LazyFrame (a
    streamed pair table) is aggregated in windows of whole steps of about WINDOW_ROWS rows,
    because exact per-step quantiles need every value of the step at once.
    """
    if isinstance(pairs, pl.LazyFrame):
        return _windowed_aggregates(pairs)
    exprs = aggregate_expressions(set(pairs.columns))
    return pairs.group_by(KEYS).agg(exprs).sort(KEYS)


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


def _windowed_aggregates(pairs: pl.LazyFrame) -> pl.DataFrame:
    columns = set(pairs.collect_schema().names())
    exprs = aggregate_expressions(columns)
    needed = sorted(set(KEYS) | {name for expr in exprs for name in expr.meta.root_names()})
    counts = pairs.group_by("step").agg(pl.len()).collect(engine="streaming")
    parts = []
    for first, last in step_windows(counts):
        window = pairs.filter(pl.col("step").is_between(first, last)).select(needed)
        parts.append(window.collect(engine="streaming").group_by(KEYS).agg(exprs))
    if not parts:
        return pairs.select(needed).collect().group_by(KEYS).agg(exprs)
    return pl.concat(parts).sort(KEYS)
