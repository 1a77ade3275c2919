"""Checks of the training dynamics: no signal, likelihood displacement, saturation, overfitting,
instability. They are warnings: the objective runs, but the dynamics are unhealthy."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from dpodiag.checks.base import Finding, RunData, Skip, check, require_steps
from dpodiag.checks.objective import MIN_TREND_STEPS, end_windows
from dpodiag.checks.reference import policy_movement

# A pair whose gradient weight sigma(-m) is below this contributes almost nothing; the weight
# equals it at m = ln(19) = 2.94.
SATURATED_WEIGHT = 0.05
SATURATED_MARGIN = math.log(1 / SATURATED_WEIGHT - 1)
# Losses whose optimum is a finite margin, so a plateau there is the objective working.
TARGET_MARGIN_LOSSES = {"cdpo", "robust", "ipo", "hinge", "exo_pair", "sppo_hard", "apo_zero",
                        "apo_down"}


@check("no-learning-signal", "warning", ("pairs", "steps"),
       meaning="Nothing moves: the policy is not updated.",
       causes="Gradients that never reach the trainable weights (gradient checkpointing without "
              "input gradients under PEFT, frozen parameters), a learning rate of 0, beta 0.",
       fix="Check that trainable parameters receive gradients (enable_input_require_grads with "
           "gradient checkpointing), the learning-rate schedule and beta.")
def no_learning_signal(data: RunData) -> list[Finding]:
    if data.pairs is not None:
        moved = policy_movement(data.pairs)
        steps = data.pairs.get_column("step").n_unique()
        if moved is None or steps < 2:
            raise Skip("needs policy log-probs at two or more steps")
        if moved > 0:
            return []
        return [data.finding("no-learning-signal", "The policy log-probs never change",
                             f"Across {steps} steps no example's policy log-prob changed. The "
                             "optimizer does not update the policy.", evidence={"steps": steps})]
    rows = require_steps(data, "train", ["grad_norm"], 3).slice(1)
    zero_share = float((rows.get_column("grad_norm") == 0).mean())
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
        split="train", step=int(rows.get_column("step").min()), evidence=evidence)]


@check("likelihood-displacement", "warning", ("pairs", "steps"),
       meaning="The chosen responses' likelihood falls while the margin grows.",
       causes="Common in DPO: the loss only sees the difference, and pushing the rejected "
              "response down drags similar chosen responses down with it (low edit distance).",
       fix="If generations degrade, add an SFT/NLL term on chosen (rpo_alpha, pref_ftx), use "
           "DPOP, lower the learning rate or stop earlier.")
def likelihood_displacement(data: RunData) -> list[Finding]:
    rows = require_steps(data, "train", ["rewards_chosen", "rewards_margins"], MIN_TREND_STEPS)
    early, late = end_windows(rows)
    early_chosen, late_chosen = (float(w.get_column("rewards_chosen").mean()) for w in (early, late))
    early_margin, late_margin = (float(w.get_column("rewards_margins").mean()) for w in (early, late))
    margin_gain = late_margin - early_margin
    chosen_fall = early_chosen - late_chosen
    reference_free = data.dialect is not None and data.dialect.reference_free
    below_reference = late_chosen < 0 or reference_free
    if not (margin_gain > 0 and chosen_fall > 0.1 * margin_gain and below_reference):
        return []
    return [data.finding(
        "likelihood-displacement", "Chosen likelihood falls while the margin grows",
        f"The mean chosen reward fell from {early_chosen:.3g} to {late_chosen:.3g} while the "
        f"margin grew from {early_margin:.3g} to {late_margin:.3g}: the margin grows partly by "
        "lowering the chosen responses' likelihood. Common in DPO; watch generation quality.",
        split="train", evidence={"early_chosen_reward": early_chosen, "late_chosen_reward": late_chosen,
                                 "early_margin": early_margin, "late_margin": late_margin})]


@check("margin-saturation", "warning", ("pairs", "steps"),
       meaning="Most pairs are separated so far that their gradient weight is ~0, and margins keep "
               "growing.",
       causes="A small or easy data set trained too long, a high learning rate; the sigmoid loss "
              "keeps pushing margins without bound on deterministic preferences.",
       fix="Stop earlier, lower the learning rate or raise beta, or use a loss with a target "
           "margin (IPO, cDPO with label smoothing).")
def margin_saturation(data: RunData) -> list[Finding]:
    loss_type, _ = data.loss_type_for_checks()
    if loss_type in TARGET_MARGIN_LOSSES:
        raise Skip(f"{loss_type} has a finite target margin, so a plateau is its optimum")
    if data.dialect is not None and not data.dialect.rewards_beta_scaled:
        raise Skip("rewards are not beta-scaled, so margins are not comparable to ln(19)")
    rows = require_steps(data, "train", ["rewards_accuracies", "rewards_margins"], MIN_TREND_STEPS)
    half = rows.tail(max(2, rows.height // 2))
    _, late = end_windows(rows)
    late_accuracy = float(late.get_column("rewards_accuracies").mean())
    late_margin = float(late.get_column("rewards_margins").mean())
    growing = float(np.polyfit(half.get_column("step").to_numpy().astype(float),
                               half.get_column("rewards_margins").to_numpy(), 1)[0]) > 0
    saturated_share = None
    if data.pairs is not None:
        last = data.pairs.filter((pl.col("split") == "train") & (pl.col("step") >= late.get_column("step").min()))
        saturated_share = float((last.get_column("grad_weight") < SATURATED_WEIGHT).mean())
        saturated = saturated_share > 0.5
    else:
        saturated = late_margin > SATURATED_MARGIN
    if not (late_accuracy >= 0.95 and saturated and growing):
        return []
    share_text = (f"{saturated_share:.0%} of late pairs have a gradient weight below {SATURATED_WEIGHT}"
                  if saturated_share is not None else
                  f"the mean margin {late_margin:.3g} is past ln(19) = {SATURATED_MARGIN:.2f}, where "
                  f"the weight sigma(-m) drops below {SATURATED_WEIGHT}")
    return [data.finding(
        "margin-saturation", "Margins saturate: most pairs no longer contribute a gradient",
        f"Train reward accuracy is {late_accuracy:.2f} and {share_text}, while the margin is still "
        "growing. The run keeps pushing already-separated pairs apart; expect over-optimisation.",
        split="train", evidence={"late_accuracy": late_accuracy, "late_margin": late_margin,
                                 "saturated_share": saturated_share, "margin_growing": growing})]


def _loss_column(rows: pl.DataFrame) -> str:
    if "loss" in rows.columns and rows.get_column("loss").is_finite().any():
        return "loss"
    return "loss_recomputed"


@check("overfitting", "warning", ("pairs", "steps"),
       meaning="Eval loss rises while train loss falls.",
       causes="Too many epochs on a small data set, a high learning rate.",
       fix="Keep the checkpoint with the lowest eval loss, train fewer epochs or lower the "
           "learning rate.")
def overfitting(data: RunData) -> list[Finding]:
    column = _loss_column(data.steps)
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
    return [data.finding(
        "overfitting", "Eval loss rises while train loss falls",
        f"Eval loss was lowest ({losses[best]:.4g}) at step {best_step} and ended at "
        f"{losses[-1]:.4g}, while train loss fell from {train_then:.4g} to {train_now:.4g}. "
        f"The checkpoint at step {best_step} generalises best.",
        split="eval", step=best_step,
        evidence={"best_eval_loss": float(losses[best]), "best_step": best_step,
                  "final_eval_loss": float(losses[-1]), "train_loss_at_best": train_then,
                  "train_loss_final": train_now})]
