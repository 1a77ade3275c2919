"""Train and eval that disagree on which response is preferred.

When chosen and rejected are swapped in one data set only, the run learns the direction of its
train data: train accuracy rises above chance while the eval accuracy falls below it and the
eval margin turns negative. Overfitting usually lowers eval accuracy towards chance rather than
far below it, so a late eval accuracy under INVERTED_ACCURACY with a falling negative margin is
read as a label disagreement, not memorisation.
"""

from __future__ import annotations

import polars as pl

from dpodiag.checks.base import MIN_TREND_STEPS, RunData, Skip, end_windows, require_steps

# Below this late-window reward accuracy, a split prefers its rejected responses.
INVERTED_ACCURACY = 0.4
# Minimum number of eval records for a trend.
MIN_EVAL_RECORDS = 3
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


def eval_direction_inverted(data: RunData) -> dict[str, float] | None:
    """Return the evidence when the train split learns a direction that the eval split calls
    wrong: train ends above chance with a positive, risen margin, eval ends inverted."""
    try:
        train = require_steps(data, "train", COLUMNS, MIN_TREND_STEPS)
        evals = require_steps(data, "eval", COLUMNS, MIN_EVAL_RECORDS)
    except Skip:
        return None
    train_means, eval_means = window_means(train), window_means(evals)
    learns = (train_means["late_accuracy"] > 0.5 and train_means["late_margin"] > 0
              and train_means["late_margin"] > train_means["early_margin"])
    if not (learns and inverted(eval_means)):
        return None
    return {**{f"train_{k}": v for k, v in train_means.items()},
            **{f"eval_{k}": v for k, v in eval_means.items()}}
