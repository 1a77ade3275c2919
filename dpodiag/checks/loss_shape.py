"""Step logs: whether the logged loss moves against the margin as the declared loss does.

Sigmoid, robust and hinge losses never rise as the margin grows, and their logged mean over a
batch follows the mean margin down. A logged train loss that climbs with the margin across a
run comes from another loss, such as a squared loss (IPO) past its target margin.
"""

from __future__ import annotations

import polars as pl

from dpodiag.checks.base import Finding, RunData, Skip

# Losses g(beta*h) that never rise as the margin grows.
NON_INCREASING_LOSSES = {"sigmoid", "robust", "hinge"}
# Rank correlation of loss with margin across train records above which the loss rises with it.
RISING_CORRELATION = 0.8
MIN_RECORDS = 20
# Spread of the mean margin (max - min) that a run must cover: over less, noise decides the ranks.
MIN_MARGIN_RANGE = 1.0


def loss_rises_with_margin(data: RunData) -> list[Finding]:
    """Report a declared non-increasing loss whose logged train loss rises with the margin."""
    loss_type, source = data.loss_type_for_checks(allow_default=False)
    if loss_type not in NON_INCREASING_LOSSES:
        raise Skip("the loss type is not declared, or its loss may rise with the margin")

    dialect = data.dialect
    if dialect is not None and (not dialect.rewards_beta_scaled or not dialect.paired
                                or dialect.reduction.startswith("rank-local")):
        raise Skip(f"{dialect.name} margins are not beta-scaled pair means")

    train = data.split_steps("train")
    if not {"loss", "rewards_margins"} <= set(train.columns):
        raise Skip("needs the train loss and rewards_margins")
    rows = train.filter(pl.col("loss").is_finite() & pl.col("rewards_margins").is_finite())
    if rows.height < MIN_RECORDS:
        raise Skip(f"needs {MIN_RECORDS} train records with a finite loss and margin")
    margins = rows.get_column("rewards_margins")
    if float(margins.max() - margins.min()) < MIN_MARGIN_RANGE:
        return []
    correlation = rows.select(pl.corr("loss", "rewards_margins", method="spearman")).item()
    if correlation is None or not correlation > RISING_CORRELATION:
        return []

    ordered = rows.sort("rewards_margins")
    low, high = ordered.row(0, named=True), ordered.row(-1, named=True)
    return [data.finding(
        "loss-type-mismatch", f"The logged loss rises with the margin, which {loss_type} never does",
        f"Across {rows.height} train records the logged loss rises with the mean margin (rank "
        f"correlation {correlation:.2f}): {low['loss']:.4g} at margin {low['rewards_margins']:.3g}, "
        f"{high['loss']:.4g} at margin {high['rewards_margins']:.3g}. The recorded {loss_type} "
        f"({source}) falls as the margin grows, so the trainer computed another loss; a squared "
        "loss such as IPO rises once the margin passes its target 1/(2 beta).",
        split="train", evidence={"declared": loss_type, "rank_correlation": correlation,
                                 "records": rows.height}, step=int(high["step"]))]
