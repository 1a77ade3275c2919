"""Loss dips at epoch ends in step logs: the loss of a short last window is still divided by the
full gradient-accumulation count.

When an epoch's micro-batches do not fill the last accumulation window, that optimizer step sums
only r < G micro-batch losses, each divided by G, so the logged loss is r/G of its true value
(HF Trainer before transformers 4.46). A loss summed over pairs instead of averaged dips the same
way on a short last batch. Rewards and margins are averaged per pair and do not dip.

The test, per record i of the train split:
    ratio_i = loss_i / min(median of the WINDOW losses before, median of the WINDOW after).
Epoch-end records are the first record at or past each whole epoch. The finding needs a dip at
every epoch end (ratio below MAX_DIP_RATIO). Each of those ratios must also fall below the
LOW_QUANTILE of the ratios of all other records. Noise alone does that with a chance of about
0.05 ** m for m epoch ends. A loss that drops when the next epoch starts, as memorisation makes it, is not a
dip, because the record before the drop is not below the records after it.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from dpodiag.checks.base import Finding, RunData

WINDOW = 5
MIN_EPOCH_ENDS = 2
MIN_OTHER_RECORDS = 20
MAX_DIP_RATIO = 0.9
LOW_QUANTILE = 0.05


def neighbour_ratios(loss: np.ndarray, window: int = WINDOW) -> np.ndarray:
    """ratio_i = loss_i / min(median(loss[i-window:i]), median(loss[i+1:i+1+window])).

    A side with no records is left out; a record with no neighbours on either side gets NaN.
    """
    series = pl.Series(loss, dtype=pl.Float64)
    # Rolling medians over the window ending just before i, and (reversed) starting just after.
    before = series.rolling_median(window, min_samples=1).shift(1).to_numpy()
    after = series.reverse().rolling_median(window, min_samples=1).shift(1).reverse().to_numpy()
    reference = np.fmin(before, after)  # fmin ignores the NaN of a missing side
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(reference > 0, loss / reference, np.nan)


def epoch_end_indices(epoch: np.ndarray) -> list[int]:
    """Indices of the first record at or past each whole epoch (1, 2, ...), after the first record."""
    whole = np.floor(epoch + 1e-6)
    return [i for i in range(1, len(epoch)) if whole[i] > whole[i - 1] and whole[i] >= 1]


def dips_at_epoch_ends(data: RunData) -> list[Finding]:
    """Step logs: the train loss dips at every epoch end while the records around it do not."""
    if data.pairs is not None or not {"loss", "epoch"} <= set(data.steps.columns):
        return []
    train = data.split_steps("train").filter(pl.col("loss").is_finite() & pl.col("epoch").is_finite())
    if train.height < MIN_OTHER_RECORDS + MIN_EPOCH_ENDS:
        return []
    loss = train.get_column("loss").to_numpy().astype(float)
    if (loss <= 0).any():
        return []  # the ratios need a positive loss, so variants that go negative are left out
    ends = epoch_end_indices(train.get_column("epoch").to_numpy().astype(float))
    # An epoch end needs records of its own epoch before it to compare with.
    ends = [i for i in ends if i >= 2]
    if len(ends) < MIN_EPOCH_ENDS:
        return []

    ratios = neighbour_ratios(loss)
    near_end = {j for i in ends for j in range(i - 1, i + 2)}
    if len(loss) - len(near_end) < MIN_OTHER_RECORDS:
        # Epochs of a few records each: the neighbours of the ends are most of the log, and the
        # medians of WINDOW records around them hold at most two ends.
        near_end = set(ends)
    others = np.array([r for j, r in enumerate(ratios) if j not in near_end and np.isfinite(r)])
    end_ratios = ratios[ends]
    if len(others) < MIN_OTHER_RECORDS or not np.isfinite(end_ratios).all():
        return []
    threshold = min(MAX_DIP_RATIO, float(np.quantile(others, LOW_QUANTILE)))
    if not (end_ratios < threshold).all():
        return []

    steps = [int(train.item(i, "step")) for i in ends]
    accumulation = data.run.meta.trainer_config.get("gradient_accumulation_steps")
    setting = f" (gradient_accumulation_steps is {accumulation} here)" if accumulation else ""
    return [data.finding(
        "loss-scale-mismatch",
        f"The train loss dips to {float(np.median(end_ratios)):.2f} x its neighbours at every epoch end",
        f"At each of the {len(ends)} epoch ends (steps {', '.join(map(str, steps[:6]))}) the logged "
        f"loss is {float(end_ratios.min()):.2f}-{float(end_ratios.max()):.2f} x the records around "
        f"it, lower than {1 - LOW_QUANTILE:.0%} of the other records are. A last accumulation "
        f"window with fewer micro-batches{setting} is still divided by the full count (transformers "
        "before 4.46), or the loss is summed over micro-batches or pairs, which a short last "
        "window or batch makes smaller. Either way the logged loss is not the mean loss.",
        split="train", step=steps[0],
        evidence={"form": "epoch-end dips", "epoch_end_steps": steps,
                  "ratios": [round(float(r), 4) for r in end_ratios],
                  "other_records_quantile": threshold, "other_records": int(len(others)),
                  "gradient_accumulation_steps": accumulation})]
