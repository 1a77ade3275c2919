"""Per-step aggregates of a recomputed pair table, in the column names of step logs.

One row per (run, split, step). Columns shared with step logs keep their step-log names
(`loss`, `rewards_chosen`, ...), so that charts and step-level checks read both levels alike.
"""

from __future__ import annotations

import polars as pl

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _mean(column: str, alias: str | None = None) -> pl.Expr:
    """Mean over finite values only; NaN and Inf are counted separately."""
    col = pl.col(column)
    return col.filter(col.is_finite()).mean().alias(alias or column)


def _quantiles(column: str, prefix: str) -> list[pl.Expr]:
    col = pl.col(column).filter(pl.col(column).is_finite())
    return [col.quantile(q, interpolation="linear").alias(f"{prefix}_q{int(q * 100):02d}")
            for q in QUANTILES]


def step_aggregates(pairs: pl.DataFrame) -> pl.DataFrame:
    """Aggregate a recomputed pair table (see `recompute`) per run, split and step.

    Rewards are beta * log-ratio; `rewards_accuracies` is the share of pairs with margin > 0 and
    `ranking_accuracy` the share with c > r. `ess_fraction` is the effective sample size of the
    gradient weights, (sum w)^2 / sum w^2, divided by the number of pairs.
    """
    has = set(pairs.columns)
    exprs: list[pl.Expr] = [
        pl.len().alias("pairs"),
        (pl.col("beta_used") * pl.col("chosen_logratio")).filter(pl.col("chosen_logratio").is_finite())
        .mean().alias("rewards_chosen"),
        (pl.col("beta_used") * pl.col("rejected_logratio")).filter(pl.col("rejected_logratio").is_finite())
        .mean().alias("rewards_rejected"),
        _mean("margin", "rewards_margins"),
        # Over finite margins only (null when none), so a NaN step shows as a gap, not a collapse.
        (pl.col("margin").filter(pl.col("margin").is_finite()) > 0).mean().alias("rewards_accuracies"),
        _mean("chosen_logratio", "logratio_chosen"),
        _mean("rejected_logratio", "logratio_rejected"),
        _mean("loss_recomputed"),
        _mean("probability", "probability_mean"),
        _mean("grad_weight", "grad_weight_mean"),
        (pl.col("grad_weight").sum() ** 2 / (pl.col("grad_weight") ** 2).sum() / pl.len())
        .alias("ess_fraction"),
        (~pl.col("margin").is_finite()).sum().alias("nonfinite_margins"),
        *_quantiles("probability", "probability"),
        *_quantiles("margin", "margin"),
    ]
    if "loss" in has:
        exprs += [_mean("loss"), (~pl.col("loss").is_finite()).sum().alias("nonfinite_loss")]
    if {"policy_chosen_logps", "policy_rejected_logps"} <= has:
        exprs += [_mean("policy_chosen_logps", "logps_chosen"),
                  _mean("policy_rejected_logps", "logps_rejected"),
                  (pl.col("policy_chosen_logps").is_finite() & pl.col("policy_rejected_logps").is_finite()
                   & (pl.col("policy_chosen_logps") > pl.col("policy_rejected_logps"))).mean()
                  .alias("ranking_accuracy")]
    if {"reference_chosen_logps", "reference_rejected_logps"} <= has:
        exprs += [_mean("reference_chosen_logps", "ref_logps_chosen"),
                  _mean("reference_rejected_logps", "ref_logps_rejected")]
    if "epoch" in has:
        exprs.append(pl.col("epoch").max().alias("epoch"))
    return (pairs.group_by(["run", "split", "step"]).agg(exprs)
            .sort(["run", "split", "step"]))
