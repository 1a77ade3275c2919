"""Checks of the training dynamics: no signal, likelihood displacement, saturation, overfitting,
instability. They are warnings: the objective runs, but the dynamics are unhealthy."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from dpodiag.checks.base import (
    MIN_TREND_STEPS,
    Finding,
    RunData,
    Skip,
    check,
    end_windows,
    finite_mean,
    require_steps,
    windows_phrase,
)
from dpodiag.checks.loss_fits import fitted_loss_type
from dpodiag.checks.per_example import policy_movement
from dpodiag.checks.split_direction import eval_inverted, train_inverted
from dpodiag.compute.moments import correlation, step_sums

# A pair whose gradient weight sigma(-m) is below this contributes almost nothing; the weight
# equals it at m = ln(19) = 2.94.
SATURATED_WEIGHT = 0.05
SATURATED_MARGIN = math.log(1 / SATURATED_WEIGHT - 1)
# Losses whose optimum is a finite margin, so a plateau there is the objective working.
TARGET_MARGIN_LOSSES = {"cdpo", "ipo", "hinge", "exo_pair", "sppo_hard", "apo_zero", "apo_down"}


@check("no-learning-signal", "warning", ("pairs", "steps"),
       meaning="Nothing moves: the policy is not updated.",
       causes="Gradients that never reach the trainable weights (gradient checkpointing without "
              "input gradients under PEFT, frozen parameters), a learning rate of 0, beta 0.",
       fix="Check that trainable parameters receive gradients (enable_input_require_grads with "
           "gradient checkpointing), the learning-rate schedule and beta.")
def no_learning_signal(data: RunData) -> list[Finding]:
    if data.pairs is not None:
        moved = policy_movement(data)
        # The step table has a row per (split, step) of the pairs, so it holds the same steps.
        steps = data.steps.get_column("step").n_unique()
        if steps < 2:
            raise Skip("needs policy log-probs at two or more steps")
        if moved is None:
            if "policy_chosen_logps" not in data.pair_columns:
                raise Skip("needs policy log-probs")
            raise Skip("needs example_id values to follow an example scored at two or more "
                       "steps, or an eval set scored again")
        if moved > 0:
            return []
        return [data.finding("no-learning-signal", "The policy log-probs never change",
                             f"Across {steps} steps no example's policy log-prob changed. The "
                             "optimizer does not update the policy.", evidence={"steps": steps})]
    rows = require_steps(data, "train", ["grad_norm"], 3).slice(1)
    zero = rows.get_column("grad_norm") == 0
    if {"loss", "rewards_margins"} <= set(rows.columns):
        # A loss of exactly 0 with a positive margin is a loss at its minimum (hinge past its
        # margin): its gradient is 0 by design, and the policy still moves by momentum.
        at_minimum = (rows.get_column("loss") == 0) & (rows.get_column("rewards_margins") > 0)
        zero = zero & ~at_minimum.fill_null(False)
    zero_share = float(zero.mean())
    if zero_share < 0.9:
        return []
    evidence = {"zero_grad_norm_share": zero_share, "records": rows.height}
    if "rewards_margins" in rows.columns:
        evidence["margins_all_zero"] = bool((rows.get_column("rewards_margins").fill_nan(0) == 0).all())
    if "learning_rate" in rows.columns:
        evidence["max_learning_rate"] = float(rows.get_column("learning_rate").max())
    return [data.finding(
        "no-learning-signal", "grad_norm is 0: nothing is training",
        f"grad_norm is exactly 0 in {zero_share:.0%} of {rows.height} train records after the first"
        + (f", with a learning rate up to {evidence['max_learning_rate']:.3g}" if "max_learning_rate" in evidence else "")
        + ". No gradient reaches the trainable weights; gradient checkpointing without input "
          "gradients under PEFT is the usual cause.",
        split="train", step=int(rows.filter(zero).get_column("step").min()), evidence=evidence)]


@check("likelihood-displacement", "warning", ("pairs", "steps"),
       meaning="The chosen responses' likelihood falls while the margin grows.",
       causes="Common in DPO: the loss only sees the difference, and pushing the rejected "
              "response down drags similar chosen responses down with it (low edit distance).",
       fix="If generations degrade, add an SFT/NLL term on chosen (rpo_alpha, pref_ftx), use "
           "DPOP, lower the learning rate or stop earlier.")
def likelihood_displacement(data: RunData) -> list[Finding]:
    if data.run.meta.loss_type == "apo_down":
        raise Skip("apo_down lowers the chosen likelihood by design")
    reference_free = data.dialect is not None and data.dialect.reference_free
    rows = require_steps(data, "train", ["rewards_chosen", "rewards_margins"], 1)
    if rows.height >= MIN_TREND_STEPS:
        early, late = end_windows(rows)
        early_chosen, early_margin = (float(early.get_column(c).mean()) for c in ("rewards_chosen", "rewards_margins"))
    elif reference_free or rows.height > 1:
        raise Skip(f"needs {MIN_TREND_STEPS} train records for a trend")
    else:
        # A single final record (a run summary) is compared with the start of a
        # reference-based run, where every reward is 0.
        late, early_chosen, early_margin = rows, 0.0, 0.0
    late_chosen, late_margin = (float(late.get_column(c).mean()) for c in ("rewards_chosen", "rewards_margins"))
    margin_gain = late_margin - early_margin
    chosen_fall = early_chosen - late_chosen
    below_reference = late_chosen < 0 or reference_free
    if not (margin_gain > 0 and chosen_fall > 0.1 * margin_gain and below_reference):
        return []
    if rows.height >= MIN_TREND_STEPS:
        change = (f"Between {windows_phrase(early, late)}, the mean chosen reward fell from "
                  f"{early_chosen:.3g} to {late_chosen:.3g} while the mean margin grew from "
                  f"{early_margin:.3g} to {late_margin:.3g}")
    else:
        change = (f"The final chosen reward is {late_chosen:.3g} and the final margin "
                  f"{late_margin:.3g}, while both are 0 before the first update of a "
                  "reference-based run")
    return [data.finding(
        "likelihood-displacement", "Chosen likelihood falls while the margin grows",
        f"{change}: the margin grows partly by lowering the chosen responses' likelihood. "
        "Common in DPO; watch generation quality.",
        split="train", evidence={"early_chosen_reward": early_chosen, "late_chosen_reward": late_chosen,
                                 "early_margin": early_margin, "late_margin": late_margin,
                                 "records": rows.height})]


@check("margin-saturation", "warning", ("pairs", "steps"),
       meaning="Most pairs are separated so far that their gradient weight is ~0.",
       causes="A small or easy data set trained too long, a high learning rate; the sigmoid loss "
              "keeps pushing margins without bound on deterministic preferences.",
       fix="Stop earlier, lower the learning rate or raise beta, or use a loss with a target "
           "margin (IPO, cDPO with label smoothing).")
def margin_saturation(data: RunData) -> list[Finding]:
    loss_type, _ = data.loss_type_for_checks()
    if data.pairs is not None:
        loss_type = fitted_loss_type(data) or loss_type
    if loss_type in TARGET_MARGIN_LOSSES:
        raise Skip(f"{loss_type} has a finite target margin, so a plateau is its optimum")
    if loss_type == "robust":
        raise Skip("robust's gradient weight stays above eps / (1 - 2 eps) at every margin, so it "
                   "does not vanish")
    if loss_type is None and data.loss_rules_out_sigmoid():
        raise Skip("the logged loss reaches 0 or below, which the sigmoid loss never does, and no "
                   "loss type is declared (pass --loss-type)")
    if data.dialect is not None and not data.dialect.rewards_beta_scaled:
        raise Skip("rewards are not beta-scaled, so margins are not comparable to ln(19)")
    rows = require_steps(data, "train", ["rewards_margins"], 1)
    _, late = end_windows(rows)
    late_margin = float(late.get_column("rewards_margins").mean())
    late_accuracy = finite_mean(late, "rewards_accuracies")

    # Pair logs count the pairs with a tiny weight; step logs bound the mean weight.
    saturated_share = late_loss = None
    if data.pairs is not None:
        last = data.scan_pairs().filter((pl.col("split") == "train")
                                        & (pl.col("step") >= late.get_column("step").min()))
        saturated_share = float(data.collect(last.select((pl.col("grad_weight") < SATURATED_WEIGHT).mean())).item())
        saturated = saturated_share > 0.5
        reason = f"{saturated_share:.0%} of late pairs have a gradient weight below {SATURATED_WEIGHT}"
    else:
        if loss_type == "sigmoid" and "loss" in late.columns and late.get_column("loss").is_finite().any():
            # For the sigmoid loss w = sigma(-m) = 1 - exp(-loss) <= loss, so mean w <= mean loss.
            late_loss = float(late.get_column("loss").filter(late.get_column("loss").is_finite()).mean())
        saturated = late_margin > SATURATED_MARGIN or (late_loss is not None and late_loss < SATURATED_WEIGHT)
        if late_margin > SATURATED_MARGIN:
            reason = (f"the mean margin {late_margin:.3g} is past ln(19) = {SATURATED_MARGIN:.2f}, where "
                      f"the weight sigma(-m) drops below {SATURATED_WEIGHT}")
        elif saturated:
            reason = f"the mean loss {late_loss:.3g} bounds the mean gradient weight below {SATURATED_WEIGHT}"
    if not saturated or (late_accuracy is not None and late_accuracy < 0.95):
        return []
    # The reason starts a sentence of its own when no accuracy comes before it.
    lead = (f"Train reward accuracy is {late_accuracy:.2f} and {reason}" if late_accuracy is not None
            else reason[:1].upper() + reason[1:])
    return [data.finding(
        "margin-saturation", "Margins saturate: most pairs no longer contribute a gradient",
        f"{lead}. The loss has no finite optimum, so training keeps pushing "
        "separated pairs apart with a vanishing gradient; expect over-optimisation.",
        split="train", evidence={"late_accuracy": late_accuracy, "late_margin": late_margin,
                                 "saturated_share": saturated_share, "late_loss": late_loss})]


def _loss_column(data: RunData) -> str:
    """Return the logged loss column, or the recomputed loss of a pair log that logs none;
    skip a step log without a logged loss."""
    rows = data.steps
    if "loss" in rows.columns and rows.get_column("loss").is_finite().any():
        return "loss"
    if data.pairs is None:
        raise Skip("the log has no finite loss")
    return "loss_recomputed"


@check("overfitting", "warning", ("pairs", "steps"),
       meaning="Eval loss rises while train loss falls.",
       causes="Too many epochs on a small data set, a high learning rate.",
       fix="Keep the checkpoint with the lowest eval loss, train fewer epochs or lower the "
           "learning rate.")
def overfitting(data: RunData) -> list[Finding]:
    column = _loss_column(data)
    evals = require_steps(data, "eval", [column], 3)
    train = require_steps(data, "train", [column], MIN_TREND_STEPS)
    losses = evals.get_column(column).to_numpy()
    best = int(np.argmin(losses))
    rise = float(losses[-1] - losses[best])
    if best == len(losses) - 1 or rise <= max(0.05 * abs(losses[best]), 0.01):
        return []
    best_step = int(evals.get_column("step")[best])
    train_at_best = train.filter(pl.col("step") <= best_step).tail(max(1, train.height // 10))
    train_end = train.tail(max(1, train.height // 10))
    train_then = float(train_at_best.get_column(column).mean()) if train_at_best.height else math.nan
    train_now = float(train_end.get_column(column).mean())
    if not train_now < train_then:
        return []
    if eval_inverted(data) or train_inverted(data):
        return []  # preference-direction-inverted explains a split below chance
    return [data.finding(
        "overfitting", "Eval loss rises while train loss falls",
        f"Eval loss was lowest ({losses[best]:.4g}) at step {best_step} and ended at "
        f"{losses[-1]:.4g}, while train loss fell from {train_then:.4g} to {train_now:.4g}. "
        f"The checkpoint at step {best_step} generalises best.",
        split="eval", step=best_step,
        evidence={"best_eval_loss": float(losses[best]), "best_step": best_step,
                  "final_eval_loss": float(losses[-1]), "train_loss_at_best": train_then,
                  "train_loss_final": train_now})]


# A margin that tracks the length difference this strongly, and more than early in training,
# is learning length rather than content.
LENGTH_CORRELATION = 0.3
LENGTH_CORRELATION_GAIN = 0.2


@check("length-exploitation", "warning", ("pairs",),
       meaning="The reward margin correlates with the chosen-minus-rejected length difference, more "
               "so as training goes on.",
       causes="Chosen responses that are systematically longer; summed log-probs reward verbosity.",
       fix="Balance lengths in the data, or use a length-normalised loss (sigmoid_norm, SimPO, "
           "R-DPO's length term).")
def length_exploitation(data: RunData) -> list[Finding]:
    if data.pairs is None:
        raise Skip("needs a pair log")
    if not {"chosen_length", "rejected_length"} <= set(data.pair_columns):
        raise Skip("needs chosen_length and rejected_length")
    first = data.run.steps[0]
    # Per train step after the first, the correlation of the margin with the length difference.
    sums = ["length_n", "length_sx", "length_sy", "length_sxx", "length_syy", "length_sxy"]
    per_step = (step_sums(data.step_moments(), sums, splits=["train"]).filter(pl.col("step") > first)
                .select("step", correlation("length").alias("r")).filter(pl.col("r").is_finite()))
    if per_step.height < MIN_TREND_STEPS:
        raise Skip("too few train steps with varying length differences")
    early, late = end_windows(per_step)
    early_r, late_r = float(early.get_column("r").mean()), float(late.get_column("r").mean())
    if not (late_r >= LENGTH_CORRELATION and late_r - early_r >= LENGTH_CORRELATION_GAIN):
        return []
    return [data.finding(
        "length-exploitation", "The margin follows the length difference",
        f"The per-step correlation between the reward margin and the chosen-minus-rejected "
        f"length grew from {early_r:.2f} to {late_r:.2f}: the policy increasingly separates pairs "
        "by length.", split="train",
        evidence={"early_correlation": early_r, "late_correlation": late_r})]


# A logged loss this many times the run's running median, and above twice the zero-margin value
# (a batch confidently wrong), is a spike; so is a grad_norm 50 times its running median, far
# beyond the 10-25x excursions seen in noisy but healthy LoRA runs.
LOSS_SPIKE_RATIO = 3.0
GRAD_SPIKE_RATIO = 50.0
RUNNING_WINDOW = 21


def _spikes(values: pl.Series, ratio: float, floor: float) -> list[int]:
    """Indices where a value exceeds `ratio` x the running median of the previous records and `floor`."""
    running = values.shift(1).rolling_median(RUNNING_WINDOW, min_samples=5)
    mask = (values > ratio * running) & (values > floor) & running.is_not_null()
    return [int(i) for i in mask.arg_true().to_list()]


@check("instability", "warning", ("pairs", "steps"),
       meaning="The loss or grad_norm spikes far above the run's own level.",
       causes="A learning rate too high for the batch size, fp16 overflow on the way to NaN, "
              "a bad batch.",
       fix="Lower the learning rate or raise warm-up, clip gradients, inspect the batches at the "
           "spikes.")
def instability(data: RunData) -> list[Finding]:
    loss_type, _ = data.loss_type_for_checks()
    spec = data.loss_spec if data.run.meta.loss_type else None
    zero_margin = (spec.zero_margin(data.run.meta.beta or 0.1, data.run.meta.label_smoothing)
                   if spec is not None and spec.zero_margin is not None else
                   (math.log(2) if loss_type == "sigmoid" else 0.0))
    spikes: dict[str, list[int]] = {}
    train = data.split_steps("train")
    if train.height < RUNNING_WINDOW:
        raise Skip(f"needs at least {RUNNING_WINDOW} train records")
    if "loss" in train.columns:
        loss = train.get_column("loss").fill_nan(None)
        spikes["loss"] = _spikes(loss, LOSS_SPIKE_RATIO, 2 * zero_margin)
    if "grad_norm" in train.columns:
        spikes["grad_norm"] = _spikes(train.get_column("grad_norm").fill_nan(None), GRAD_SPIKE_RATIO, 0.0)
    spikes = {name: rows for name, rows in spikes.items() if rows}
    if not spikes:
        return []
    steps = {name: train.get_column("step").gather(rows).to_list() for name, rows in spikes.items()}
    first = min(min(s) for s in steps.values())
    listed = "; ".join(f"{name} at step(s) {', '.join(map(str, s[:5]))}" for name, s in steps.items())
    return [data.finding(
        "instability", "Loss or gradient spikes",
        f"Spikes far above the run's running median: {listed}. A learning rate too high, an "
        "overflow or a bad batch causes them; inspect the batches at those steps.",
        split="train", step=int(first), evidence={"spike_steps": {k: v[:20] for k, v in steps.items()}})]
