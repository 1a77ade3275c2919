"""Train and eval that disagree on which response is preferred.

When chosen and rejected are swapped in one data set only, the run learns the direction of its
train data: train accuracy rises above chance while the eval accuracy falls below it and the
eval margin turns negative. When they are swapped where the train pairs are logged, the mirror
shows: the train records fall below chance while eval learns. Overfitting usually lowers eval
accuracy towards chance rather than far below it, so a late accuracy under INVERTED_ACCURACY
with a falling negative margin is read as a label disagreement, not memorisation.
"""

from __future__ import annotations

import polars as pl

from dpodiag.checks.base import MIN_TREND_STEPS, RunData, Skip, end_windows, require_steps

# Below this late-window reward accuracy, a split prefers its rejected responses.
INVERTED_ACCURACY = 0.4
# Minimum number of eval records for a trend.
MIN_EVAL_RECORDS = 3
# The inverted split's late margin must reach at least this share of the learning split's, with
# the opposite sign: swapped labels mirror the margin, while a small eval set that does not
# generalise drifts around 0.
MIRROR_SHARE = 0.25
COLUMNS = ["rewards_accuracies", "rewards_margins"]


def window_means(rows: pl.DataFrame) -> dict[str, float]:
    """Return the mean margin of the first and last windows and the mean accuracy of the last."""
    early, late = end_windows(rows)
    return {"early_margin": float(early.get_column("rewards_margins").mean()),
            "late_margin": float(late.get_column("rewards_margins").mean()),
            "late_accuracy": float(late.get_column("rewards_accuracies").mean()),
            "late_step": int(late.get_column("step").min())}


def inverted(means: dict[str, float]) -> bool:
    """Tell whether a split ends below chance with a negative margin that fell."""
    return (means["late_accuracy"] < INVERTED_ACCURACY and means["late_margin"] < 0
            and means["late_margin"] < means["early_margin"])


def learns(means: dict[str, float]) -> bool:
    """Tell whether a split ends above chance with a positive margin that rose."""
    return (means["late_accuracy"] > 0.5 and means["late_margin"] > 0
            and means["late_margin"] > means["early_margin"])


def split_disagreement(data: RunData) -> tuple[str, dict[str, float]] | None:
    """Return the inverted split ("train" or "eval") and the evidence when one split ends
    inverted while the other learns, else None."""
    try:
        train = require_steps(data, "train", COLUMNS, MIN_TREND_STEPS)
        evals = require_steps(data, "eval", COLUMNS, MIN_EVAL_RECORDS)
    except Skip:
        return None
    train_means, eval_means = window_means(train), window_means(evals)
    evidence = {**{f"train_{k}": v for k, v in train_means.items()},
                **{f"eval_{k}": v for k, v in eval_means.items()}}
    if learns(train_means) and inverted(eval_means) and mirrors(eval_means, train_means):
        return "eval", evidence
    if inverted(train_means) and learns(eval_means) and mirrors(train_means, eval_means):
        return "train", evidence
    return None


def mirrors(inverted_means: dict[str, float], learning_means: dict[str, float]) -> bool:
    """Tell whether the inverted split's late margin is at least MIRROR_SHARE of the learning
    split's, with the opposite sign."""
    return -inverted_means["late_margin"] >= MIRROR_SHARE * learning_means["late_margin"]


def train_inverted(data: RunData) -> bool:
    """Tell whether the train split ends inverted (see `inverted`)."""
    try:
        return inverted(window_means(require_steps(data, "train", COLUMNS, MIN_TREND_STEPS)))
    except Skip:
        return False


def eval_inverted(data: RunData) -> bool:
    """Tell whether the eval split ends inverted while the train split learns."""
    found = split_disagreement(data)
    return found is not None and found[0] == "eval"
