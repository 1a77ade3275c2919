"""Checks that the run optimised the objective it declares: sign, beta, scale, loss variant."""

from __future__ import annotations

import torch

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
from dpodiag.checks.eval_identity import beta_from_eval_identity
from dpodiag.checks.epoch_dips import dips_at_epoch_ends
from dpodiag.checks.first_record import loss_type_at_first_record, records_before_update, scale_at_first_record
from dpodiag.checks.loss_shape import loss_rises_with_margin
from dpodiag.checks.split_direction import INVERTED_ACCURACY, split_disagreement
from dpodiag.checks.loss_fits import (
    declared_fails,
    explained_by_declared_family,
    explains,
    first_split,
    fits_text,
    identifications,
    options_text,
    source_word,
    variant_text,
)
from dpodiag.compute.losses import LOSSES, PairBatch

# A train split climbs its loss when its last window is this far inverted (reward accuracy below
# ASCENT_ACCURACY, mean margin below -ASCENT_MARGIN) and its loss grew by ASCENT_LOSS_GROWTH or
# more. A run that has not learned yet stays near accuracy 0.5 and margin 0.
ASCENT_ACCURACY = 0.2
ASCENT_MARGIN = 0.5
ASCENT_LOSS_GROWTH = 1.25
# A first loss within this relative distance of DiscoPOP's zero-margin value names DiscoPOP. TRL
# logs the loss with 4 decimals, 6e-5 relative at 0.85.
DISCOPOP_MATCH = 2e-4


@check("preference-direction-inverted", "error", ("pairs", "steps"),
       meaning="Training pushes the rejected responses above the chosen ones.",
       causes="A sign error in the loss, or chosen and rejected swapped in the collator or the data "
              "(in one split only, train and eval then disagree).",
       fix="Check the sign of the margin in the loss and the order of chosen/rejected in the batch.")
def preference_direction_inverted(data: RunData) -> list[Finding]:
    if data.dialect is not None and not data.dialect.paired:
        raise Skip("unpaired objectives log no paired accuracy")
    train = require_steps(data, "train", ["rewards_accuracies", "rewards_margins"], MIN_TREND_STEPS)
    early, late = end_windows(train)
    early_margin = float(early.get_column("rewards_margins").mean())
    late_margin = float(late.get_column("rewards_margins").mean())
    late_accuracy = float(late.get_column("rewards_accuracies").mean())
    if not (late_accuracy < INVERTED_ACCURACY and late_margin < 0 and late_margin < early_margin):
        return _splits_disagree(data, "eval")

    evidence = {"early_margin": early_margin, "late_margin": late_margin,
                "late_reward_accuracy": late_accuracy}
    moved = (f"Between {windows_phrase(early, late)}, the mean reward margin moved from "
             f"{early_margin:.3g} to {late_margin:.3g}, and the mean reward accuracy of the last "
             f"window is {late_accuracy:.2f}, below chance.")
    loss_text = " "
    early_loss, late_loss = (finite_mean(window, "loss") for window in (early, late))
    if early_loss is not None and late_loss is not None:
        if not late_loss < early_loss:
            # The loss rose as the margin fell: the log is consistent with its own objective.
            # Either the train records are logged swapped (eval learns), the optimizer climbs
            # the loss, or a run that has not learned yet drifts this way by chance.
            return (_splits_disagree(data, "train")
                    or _loss_ascent(data, moved, early_loss, late_loss, evidence, late))
        evidence.update(early_logged_loss=early_loss, late_logged_loss=late_loss)
        loss_text = (f" The mean logged loss fell from {early_loss:.4f} to {late_loss:.4f} "
                     "all the same, so the loss rewards the wrong direction. ")
    if data.pairs is not None:
        loss_text += sign_error_text(data, evidence)
    causes = "A sign error in the loss or chosen/rejected swapped in collation are the usual causes."
    if data.run.meta.loss_type == "discopop" or (data.run.meta.loss_type is None and first_loss_is_discopop(data)):
        causes = discopop_minimum_text(data, evidence)
    return [data.finding(
        "preference-direction-inverted", "Training prefers the rejected responses",
        f"{moved}{loss_text}{causes}", split="train", step=int(late.get_column("step").min()),
        evidence=evidence)]


def _loss_ascent(data: RunData, moved: str, early_loss: float, late_loss: float, evidence: dict,
                 late) -> list[Finding]:
    """Return the finding when the train loss climbs steadily while the preference inverts (the
    optimizer increases the loss), else none: a slight drift before learning stays silent."""
    accuracy, margin = evidence["late_reward_accuracy"], evidence["late_margin"]
    if not (accuracy < ASCENT_ACCURACY and margin < -ASCENT_MARGIN
            and late_loss > ASCENT_LOSS_GROWTH * early_loss):
        return []
    evidence.update(early_logged_loss=early_loss, late_logged_loss=late_loss)
    return [data.finding(
        "preference-direction-inverted", "Training increases its own loss",
        f"{moved} The mean logged loss rose with it, from {early_loss:.4f} to {late_loss:.4f}: the "
        "optimizer climbs the loss instead of descending it. A negated loss or gradient "
        "(maximising where it should minimise) is the usual cause; a learning rate so high that "
        "training diverges can also do this (see instability).",
        split="train", step=int(late.get_column("step").min()), evidence=evidence)]


def _splits_disagree(data: RunData, split: str) -> list[Finding]:
    """Return the finding when `split` ends inverted while the other split learns, else none."""
    found = split_disagreement(data)
    if found is None or found[0] != split:
        return []
    evidence = found[1]
    train = (f"train reward accuracy ends at {evidence['train_late_accuracy']:.2f} with a mean "
             f"margin of {evidence['train_late_margin']:.3g}")
    evals = (f"eval reward accuracy ends at {evidence['eval_late_accuracy']:.2f} with a mean "
             f"margin of {evidence['eval_late_margin']:.3g}")
    if split == "eval":
        text = (f"The {train}, while the {evals}, below chance and falling. The policy learns the "
                "train direction, which the eval labels call wrong: chosen and rejected are "
                "swapped in one of the two data sets (or in the collation of one split). "
                "Overfitting usually brings eval accuracy towards chance, not far below it.")
    else:
        text = (f"The {evals}, while the {train}, below chance and falling, with a rising loss. "
                "The policy learns the direction of the eval labels, so the train records call "
                "chosen what training treated as rejected: chosen and rejected are swapped where "
                "the train pairs or their metrics are logged.")
    return [data.finding(
        "preference-direction-inverted", "Train and eval disagree on which response is preferred",
        text, split=split, step=evidence[f"{split}_late_step"], evidence=evidence)]


def discopop_minimum_text(data: RunData, evidence: dict) -> str:
    """Return the cause for DiscoPOP: its local minimum at a small negative margin.

    With tau 0.05, the loss rises from margin 0 for small positive margins and falls to a local
    minimum at a negative margin, so gradient descent from policy = reference can settle there.
    """
    beta = data.run.meta.beta or 0.1
    margins = torch.linspace(-1.0, 0.0, 1001, dtype=torch.float64)
    values = LOSSES["discopop"].fn(PairBatch(margins / beta, torch.zeros_like(margins)), beta)
    lowest = float(margins[int(torch.argmin(values))])
    evidence["discopop_local_minimum_margin"] = lowest
    return (f"DiscoPOP's loss has a local minimum at the margin {lowest:.3g}, beside margin 0, and "
            "rises for small positive margins, so training from policy = reference can settle "
            "at a negative margin: the loss's own shape, not a sign error. Its slope at margin "
            "0 is (1 - ln 2) / (4 tau) - 3/4, so a discopop_tau above (1 - ln 2) / 3 = 0.102 "
            "starts it downhill towards positive margins.")


def first_loss_is_discopop(data: RunData) -> bool:
    """Tell whether a step log's loss before any update is DiscoPOP's zero-margin value,
    ln(2) / 2 + 1 / 2 = 0.8466, which no other registered loss takes (a log that names no loss
    type, as TRL's trainer_state.json)."""
    if data.pairs is not None:
        return False
    value = LOSSES["discopop"].zero_margin(data.run.meta.beta or 0.1, 0.0)
    for record in records_before_update(data):
        loss = record["loss"][0] if "loss" in record.columns else None
        if loss is not None and abs(loss - value) <= DISCOPOP_MATCH * value:
            return True
    return False


def sign_error_text(data: RunData, evidence: dict) -> str:
    """Return a sentence when the logged loss is the declared loss with the margin's sign flipped."""
    try:
        ident = identifications(data).get("train")
    except Skip:
        return ""
    if ident is None or ident.sign_flipped is None or not explains(ident.sign_flipped.rmse, ident):
        return ""
    evidence["sign_flipped_rmse"] = ident.sign_flipped.rmse
    return (f"The logged loss equals {ident.declared.loss_type} with the margin's sign flipped "
            f"(RMSE {ident.sign_flipped.rmse:.2g}): the loss has a sign error, or the log names "
            "chosen what the loss treated as rejected. ")


@check("beta-mismatch", "error", ("pairs", "steps"),
       meaning="The logged loss matches the declared loss with a different beta.",
       causes="A hard-coded or default beta in the loss while the config records another, or a "
              "beta schedule that is not logged.",
       fix="Pass the configured beta to the loss, or correct the recorded beta.")
def beta_mismatch(data: RunData) -> list[Finding]:
    if data.pairs is None:
        return beta_from_eval_identity(data)
    hits = {}
    for split, ident in identifications(data).items():
        if not declared_fails(ident):
            continue  # the beta fit is computed on first access, so only where it can matter
        fit = ident.beta_fit
        if fit is None or not explains(fit.rmse, ident):
            continue
        scale_better = ident.scale_fit is not None and ident.scale_fit.rmse < fit.rmse
        if abs(fit.beta / ident.declared.beta - 1) >= 0.05 and not scale_better:
            hits[split] = (ident, fit)
    if not hits:
        return []
    split, splits = first_split(data, hits)
    ident, fit = hits[split]
    recorded = source_word(data, "beta", "recorded")
    return [data.finding(
        "beta-mismatch", f"The logged loss was computed with beta {fit.beta:.3g}, not {ident.declared.beta:g}",
        f"{fits_text(data, split, ident)} and {fit.rmse:.3g} at beta {fit.beta:.4g}. The loss used a "
        f"different beta from the {recorded} one, so rewards and margins computed with the {recorded} "
        "beta are off by the same factor.",
        split=split, evidence={"declared_beta": ident.declared.beta, "fitted_beta": fit.beta,
                               "declared_rmse": ident.declared.rmse, "fitted_rmse": fit.rmse,
                               "splits": splits, "batch_level": ident.batch_level})]


@check("loss-scale-mismatch", "error", ("pairs", "steps"),
       meaning="The logged loss is a constant multiple k != 1 of the recomputed loss.",
       causes="The loss divided (or multiplied) by the gradient-accumulation steps before "
              "logging, or a sum logged where a mean was meant. In step logs, a loss that dips "
              "at every epoch end comes from a short last accumulation window divided by the "
              "full count.",
       fix="Log the loss before scaling it for gradient accumulation, or fix the reduction.")
def loss_scale_mismatch(data: RunData) -> list[Finding]:
    if data.pairs is None:
        # The epoch-end form needs no declared loss type; the first-record form skips without one.
        dips = dips_at_epoch_ends(data)
        try:
            return scale_at_first_record(data) + dips
        except Skip:
            if dips:
                return dips
            raise
    hits = {}
    for split, ident in identifications(data).items():
        fit = ident.scale_fit
        # A scale of 0 "explains" a logged loss of exactly 0 (hinge past its margin), which no
        # reduction bug produces.
        if declared_fails(ident) and fit is not None and explains(fit.rmse, ident) \
                and fit.scale > 0 and abs(fit.scale - 1) >= 0.05:
            hits[split] = (ident, fit)
    if not hits:
        return []
    split, splits = first_split(data, hits)
    ident, fit = hits[split]
    return [data.finding(
        "loss-scale-mismatch", f"The logged {split} loss is {fit.scale:.3g} x the recomputed loss",
        f"{fits_text(data, split, ident)} and {fit.rmse:.3g} once multiplied by k = {fit.scale:.4g}"
        f"{f' (about 1/{1 / fit.scale:.3g})' if 0 < fit.scale < 1 else ''}. A gradient-accumulation "
        "division or a sum-versus-mean reduction bug scales the logged loss.",
        split=split, evidence={"scale": fit.scale, "declared_rmse": ident.declared.rmse,
                               "scaled_rmse": fit.rmse, "splits": splits})]


@check("loss-type-mismatch", "error", ("pairs", "steps"),
       meaning="The logged loss matches another loss variant far better than the declared one.",
       causes="The configured loss_type was ignored or overridden, or the wrong name was recorded.",
       fix="Check which loss the trainer really computes and record that loss_type.")
def loss_type_mismatch(data: RunData) -> list[Finding]:
    if data.pairs is None:
        # The first records decide where they exist; the loss's direction against the margin
        # over the run decides otherwise.
        try:
            found = loss_type_at_first_record(data)
        except Skip:
            found = []
        return found or loss_rises_with_margin(data)
    hits = {}
    for split, ident in identifications(data).items():
        if not declared_fails(ident) or explained_by_declared_family(ident):
            continue
        best = ident.best_variant()
        if best is not None and best.loss_type != ident.declared.loss_type and explains(best.rmse, ident):
            hits[split] = (ident, best)
    if not hits:
        return []
    split, splits = first_split(data, hits)
    ident, best = hits[split]
    return [data.finding(
        "loss-type-mismatch", f"The logged loss is {best.loss_type}{options_text(best)}, not "
        f"{ident.declared.loss_type}",
        f"{fits_text(data, split, ident)} and {best.rmse:.3g} with {variant_text(best)}. The trainer "
        "computed another loss variant than the one recorded.",
        split=split, evidence={"declared": ident.declared.loss_type, "fitted": best.loss_type,
                               "fitted_beta": best.beta, "fitted_options": best.options,
                               "declared_rmse": ident.declared.rmse,
                               "fitted_rmse": best.rmse, "splits": splits})]


@check("loss-mismatch", "error", ("pairs", "unpaired"),
       meaning="The logged loss disagrees with the recomputed one and no loss variant, beta or "
               "scale explains it, or only another label smoothing or SimPO gamma does.",
       causes="Extra loss terms (SFT/NLL, auxiliary losses), a loss computed on other pairs than "
              "the logged log-probs, or logged log-probs that are not the ones the loss used.",
       fix="Log the per-pair preference loss and the log-probs from the same forward pass.")
def loss_mismatch(data: RunData) -> list[Finding]:
    if data.run.level == "unpaired":
        return unpaired_loss_mismatch(data)
    hits, option_hits = {}, {}
    for split, ident in identifications(data).items():
        if not declared_fails(ident) or explained_by_declared_family(ident):
            continue
        best = ident.best_variant()
        if best is None or not explains(best.rmse, ident):
            hits[split] = (ident, best)
        elif best.loss_type == ident.declared.loss_type and best.options:
            option_hits[split] = (ident, best)
    if not hits and option_hits:
        return [_option_mismatch(data, option_hits)]
    if not hits:
        return []
    split, splits = first_split(data, hits)
    ident, best = hits[split]
    return [data.finding(
        "loss-mismatch", "The logged loss does not match the recomputed loss",
        f"{fits_text(data, split, ident)} (logged loss RMS {ident.logged_rms:.3g}), and no loss "
        "variant, beta or constant scale reproduces the logged values. The loss and the log-probs "
        "disagree.",
        split=split, evidence={"declared_rmse": ident.declared.rmse, "logged_rms": ident.logged_rms,
                               "best_variant": best.loss_type if best else None,
                               "best_variant_beta": best.beta if best else None,
                               "best_variant_rmse": best.rmse if best else None, "splits": splits})]




def _option_mismatch(data: RunData, hits: dict) -> Finding:
    """Return the finding for a declared loss type that explains the log only at another value
    of its option (label smoothing, SimPO's gamma) than the declared one."""
    split, splits = first_split(data, hits)
    ident, best = hits[split]
    (name, value), = best.options.items()
    declared = getattr(data.run.meta, name)
    return data.finding(
        "loss-mismatch", f"The logged loss uses {name} {value:.3g}, not {declared}",
        f"{fits_text(data, split, ident)}, and {best.rmse:.3g} with {variant_text(best)}. The loss "
        f"used another {name} than the {source_word(data, name, 'recorded')} one; only the record "
        "or the configuration is wrong, not the pairs.",
        split=split, evidence={"option": name, "declared_value": declared, "fitted_value": value,
                               "fitted_beta": best.beta, "declared_rmse": ident.declared.rmse,
                               "fitted_rmse": best.rmse, "splits": splits})


def unpaired_loss_mismatch(data: RunData) -> list[Finding]:
    """Unpaired logs: the logged per-step mean loss against the recomputed KTO loss."""
    rows = require_steps(data, "train", ["loss", "loss_recomputed"], 1)
    logged, recomputed = rows.get_column("loss"), rows.get_column("loss_recomputed")
    rms = float((logged ** 2).mean() ** 0.5)
    rmse = float(((logged - recomputed) ** 2).mean() ** 0.5)
    if rmse <= max(0.01 * rms, 1e-4):
        return []
    return [data.finding(
        "loss-mismatch", "The logged loss does not match the recomputed KTO loss",
        f"Per step, the logged loss has RMSE {rmse:.3g} against the KTO loss recomputed from the "
        f"log-ratios with beta {data.run.meta.beta:g} and the logged z0 (logged loss RMS {rms:.3g}). "
        "Another beta, other class weights or a z0 that is not the one logged explain it.",
        split="train", evidence={"rmse": rmse, "logged_rms": rms, "beta": data.run.meta.beta})]
