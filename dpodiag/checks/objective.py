"""Checks that the run optimised the objective it declares: sign, beta, scale, loss variant."""

from __future__ import annotations

import polars as pl

from dpodiag.checks.base import Finding, RunData, Skip, check, require_pairs, require_steps
from dpodiag.checks.identities import first_record_check
from dpodiag.checks.reference import eval_identity, eval_identity_holds
from dpodiag.compute.identify import Identification, identify
from dpodiag.compute.losses import LOSSES

# Minimum train steps for a trend, and the share of steps in each end window.
MIN_TREND_STEPS = 5
END_WINDOW = 0.2
# Below this late-window reward accuracy, a run prefers the rejected responses.
INVERTED_ACCURACY = 0.4


def end_windows(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The first and last END_WINDOW share of a step-sorted table (at least one row each)."""
    size = max(1, int(round(frame.height * END_WINDOW)))
    return frame.head(size), frame.tail(size)


@check("preference-direction-inverted", "error", ("pairs", "steps"),
       meaning="Training pushes the rejected responses above the chosen ones.",
       causes="A sign error in the loss, or chosen and rejected swapped in the collator or the data.",
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
        return []

    evidence = {"early_margin": early_margin, "late_margin": late_margin,
                "late_reward_accuracy": late_accuracy}
    loss_text = " "
    if "loss" in train.columns and train.get_column("loss").is_finite().any():
        early_loss = float(early.get_column("loss").mean())
        late_loss = float(late.get_column("loss").mean())
        evidence.update(early_logged_loss=early_loss, late_logged_loss=late_loss)
        if late_loss < early_loss:
            loss_text = (f" The logged loss fell from {early_loss:.4f} to {late_loss:.4f} all the same, "
                         "so the loss rewards the wrong direction. ")
    if data.pairs is not None:
        loss_text += _sign_error_text(data, evidence)
    return [data.finding(
        "preference-direction-inverted", "Training prefers the rejected responses",
        f"Reward accuracy ends at {late_accuracy:.2f} (below chance) and the mean reward margin "
        f"moved from {early_margin:.3g} to {late_margin:.3g}.{loss_text}A sign error in the loss or "
        "chosen/rejected swapped in collation are the usual causes.",
        split="train", step=int(late.get_column("step").min()), evidence=evidence)]


def _sign_error_text(data: RunData, evidence: dict) -> str:
    """A sentence when the logged loss is the declared loss with the margin's sign flipped."""
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


def identifications(data: RunData) -> dict[str, Identification]:
    """Fit the logged per-pair losses of each split once per run (cached).

    Splits are fitted apart because trainers reduce them apart: a loss divided by the
    gradient-accumulation steps in training is logged unscaled in evaluation.
    """
    if "identification" not in data.cache:
        pairs = require_pairs(data)
        meta = data.run.meta
        if "loss" not in pairs.columns:
            raise Skip("the log has no per-pair loss column")
        if meta.loss_type is None or meta.beta is None:
            raise Skip("loss type or beta is not declared")
        fits = {}
        for split in data.run.splits:
            fit = identify(pairs.filter(pl.col("split") == split), meta.loss_type, meta.beta,
                           meta.label_smoothing, meta.simpo_gamma,
                           per_token=meta.logps_normalisation == "mean")
            if fit is not None and fit.declared is not None:
                fits[split] = fit
        data.cache["identification"] = fits
    if not data.cache["identification"]:
        raise Skip("too few rows with a finite logged loss")
    return data.cache["identification"]


def explains(rmse: float, ident: Identification) -> bool:
    """True when a fit reproduces the logged loss to within 1% of its RMS (bf16 loss values
    carry ~0.4% relative error) or 1e-4 (4-decimal rounding)."""
    return rmse <= max(0.01 * ident.logged_rms, 1e-4)


def _declared_fails(ident: Identification) -> bool:
    return not explains(ident.declared.rmse / 5, ident)


def _fits_text(split: str, ident: Identification) -> str:
    return (f"On {split} pairs the logged loss has RMSE {ident.declared.rmse:.3g} against the "
            f"declared {ident.declared.loss_type} at beta {ident.declared.beta:g}")


def _explained_by_declared_family(ident: Identification) -> bool:
    """True when another beta, a constant scale or a flipped sign of the declared loss explains the log."""
    fits = [ident.beta_fit, ident.scale_fit, ident.sign_flipped]
    return any(fit is not None and explains(fit.rmse, ident) for fit in fits)


def _first_split(data: RunData, hits: dict) -> tuple[str, list[str]]:
    """The split a finding is reported on (train first) and every split where it holds."""
    splits = [split for split in data.run.splits if split in hits]
    return splits[0], splits


@check("beta-mismatch", "error", ("pairs", "steps"),
       meaning="The logged loss matches the declared loss with a different beta.",
       causes="A hard-coded or default beta in the loss while the config records another, or a "
              "beta schedule that is not logged.",
       fix="Pass the configured beta to the loss, or correct the recorded beta.")
def beta_mismatch(data: RunData) -> list[Finding]:
    if data.pairs is None:
        return _beta_from_eval_identity(data)
    hits = {}
    for split, ident in identifications(data).items():
        fit = ident.beta_fit
        if not _declared_fails(ident) or fit is None or not explains(fit.rmse, ident):
            continue
        scale_better = ident.scale_fit is not None and ident.scale_fit.rmse < fit.rmse
        if abs(fit.beta / ident.declared.beta - 1) >= 0.05 and not scale_better:
            hits[split] = (ident, fit)
    if not hits:
        return []
    split, splits = _first_split(data, hits)
    ident, fit = hits[split]
    return [data.finding(
        "beta-mismatch", f"The logged loss was computed with beta {fit.beta:.3g}, not {ident.declared.beta:g}",
        f"{_fits_text(split, ident)} and {fit.rmse:.3g} at beta {fit.beta:.4g}. The loss used a "
        "different beta from the recorded one, so rewards and margins reported with the recorded "
        "beta are off by the same factor.",
        split=split, evidence={"declared_beta": ident.declared.beta, "fitted_beta": fit.beta,
                               "declared_rmse": ident.declared.rmse, "fitted_rmse": fit.rmse,
                               "splits": splits, "batch_level": ident.batch_level})]


@check("loss-scale-mismatch", "error", ("pairs", "steps"),
       meaning="The logged loss is a constant multiple k != 1 of the recomputed loss.",
       causes="The loss divided (or multiplied) by the gradient-accumulation steps before "
              "logging, or a sum logged where a mean was meant.",
       fix="Log the loss before scaling it for gradient accumulation, or fix the reduction.")
def loss_scale_mismatch(data: RunData) -> list[Finding]:
    if data.pairs is None:
        return _scale_at_first_record(data)
    hits = {}
    for split, ident in identifications(data).items():
        fit = ident.scale_fit
        if _declared_fails(ident) and fit is not None and explains(fit.rmse, ident) \
                and abs(fit.scale - 1) >= 0.05:
            hits[split] = (ident, fit)
    if not hits:
        return []
    split, splits = _first_split(data, hits)
    ident, fit = hits[split]
    return [data.finding(
        "loss-scale-mismatch", f"The logged {split} loss is {fit.scale:.3g} x the recomputed loss",
        f"{_fits_text(split, ident)} and {fit.rmse:.3g} once multiplied by k = {fit.scale:.4g} "
        f"(about 1/{1 / fit.scale:.3g}). A gradient-accumulation division or a sum-versus-mean "
        "reduction bug scales the logged loss.",
        split=split, evidence={"scale": fit.scale, "declared_rmse": ident.declared.rmse,
                               "scaled_rmse": fit.rmse, "splits": splits})]


@check("loss-type-mismatch", "error", ("pairs", "steps"),
       meaning="The logged loss matches another loss variant far better than the declared one.",
       causes="The configured loss_type was ignored or overridden, or the wrong name was recorded.",
       fix="Check which loss the trainer really computes and record that loss_type.")
def loss_type_mismatch(data: RunData) -> list[Finding]:
    if data.pairs is None:
        return _loss_type_at_first_record(data)
    hits = {}
    for split, ident in identifications(data).items():
        if not _declared_fails(ident) or _explained_by_declared_family(ident):
            continue
        best = ident.best_variant()
        if best is not None and best.loss_type != ident.declared.loss_type and explains(best.rmse, ident):
            hits[split] = (ident, best)
    if not hits:
        return []
    split, splits = _first_split(data, hits)
    ident, best = hits[split]
    return [data.finding(
        "loss-type-mismatch", f"The logged loss is {best.loss_type}, not {ident.declared.loss_type}",
        f"{_fits_text(split, ident)} and {best.rmse:.3g} with {best.loss_type} at beta "
        f"{best.beta:.4g}. The trainer computed another loss variant than the one recorded.",
        split=split, evidence={"declared": ident.declared.loss_type, "fitted": best.loss_type,
                               "fitted_beta": best.beta, "declared_rmse": ident.declared.rmse,
                               "fitted_rmse": best.rmse, "splits": splits})]


@check("loss-mismatch", "error", ("pairs",),
       meaning="The logged loss disagrees with the recomputed one and no loss variant, beta or "
               "scale explains it.",
       causes="Extra loss terms (SFT/NLL, auxiliary losses), a loss computed on other pairs than "
              "the logged log-probs, or logged log-probs that are not the ones the loss used.",
       fix="Log the per-pair preference loss and the log-probs from the same forward pass.")
def loss_mismatch(data: RunData) -> list[Finding]:
    hits = {}
    for split, ident in identifications(data).items():
        if not _declared_fails(ident) or _explained_by_declared_family(ident):
            continue
        best = ident.best_variant()
        if best is None or not explains(best.rmse, ident):
            hits[split] = (ident, best)
    if not hits:
        return []
    split, splits = _first_split(data, hits)
    ident, best = hits[split]
    return [data.finding(
        "loss-mismatch", "The logged loss does not match the recomputed loss",
        f"{_fits_text(split, ident)} (logged loss RMS {ident.logged_rms:.3g}), and no loss "
        "variant, beta or constant scale reproduces the logged values. The loss and the log-probs "
        "disagree.",
        split=split, evidence={"declared_rmse": ident.declared.rmse, "logged_rms": ident.logged_rms,
                               "best_variant": best.loss_type if best else None,
                               "best_variant_rmse": best.rmse if best else None, "splits": splits})]


def other_zero_margin_match(data: RunData, evidence: dict) -> tuple[str, float] | None:
    """Another loss variant whose zero-margin value (at the run's beta) is the first loss, within 1%."""
    beta = data.run.meta.beta or 0.1
    for name, spec in LOSSES.items():
        if name == evidence["loss_type"] or spec.zero_margin is None:
            continue
        value = spec.zero_margin(beta, data.run.meta.label_smoothing)
        if abs(evidence["first_loss"] - value) <= 0.01 * value:
            return name, value
    return None


def _loss_type_at_first_record(data: RunData) -> list[Finding]:
    """Step logs: before any update the loss is another variant's zero-margin value."""
    result = first_record_check(data)
    if result is None:
        return []
    evidence, rewards_zero = result
    match = other_zero_margin_match(data, evidence)
    if match is None or not (rewards_zero or "first_rewards" not in evidence):
        return []
    name, value = match
    return [data.finding(
        "loss-type-mismatch", f"The first logged loss is {name}'s zero-margin value",
        f"Before any update the {evidence['split']} loss is {evidence['first_loss']:.4g}, which is "
        f"the zero-margin value of {name} ({value:.4g}), not of the recorded "
        f"{evidence['loss_type']} ({evidence['zero_margin_loss']:.4g}). The trainer computed "
        f"{name}.", split=evidence["split"], step=evidence["step"],
        evidence={**evidence, "matching_loss_type": name, "matching_value": value})]


def scale_factor_like(ratio: float | None) -> bool:
    """True for k or 1/k with an integer k >= 2 (within 2%): the factors that gradient
    accumulation and sum-versus-mean reductions produce."""
    if not ratio or ratio <= 0:
        return False
    k = ratio if ratio > 1 else 1 / ratio
    return round(k) >= 2 and abs(k - round(k)) <= 0.02 * k


def _scale_at_first_record(data: RunData) -> list[Finding]:
    """Step logs: rewards 0 before any update, yet the loss is k x its zero-margin value."""
    result = first_record_check(data)
    if result is None:
        return []
    evidence, rewards_zero = result
    if other_zero_margin_match(data, evidence) is not None:
        return []  # another loss variant explains the value: loss-type-mismatch reports it
    ratio = evidence["ratio"]
    if not ((rewards_zero or "first_rewards" not in evidence) and scale_factor_like(ratio)):
        return []
    return [data.finding(
        "loss-scale-mismatch", f"The first logged loss is {ratio:.3g} x its zero-margin value",
        f"Before any update the {evidence['split']} loss is {evidence['first_loss']:.4g} while policy "
        f"and reference agree (rewards 0), against {evidence['zero_margin_loss']:.4g} for "
        f"{evidence['loss_type']}: the logged loss is scaled by about {ratio:.3g}, as a "
        "gradient-accumulation division or a sum-versus-mean bug does.",
        split=evidence["split"], step=evidence["step"], evidence=evidence)]


def _beta_from_eval_identity(data: RunData) -> list[Finding]:
    """Step logs: the slope of eval rewards against eval log-probs is beta."""
    declared = data.run.meta.beta
    if declared is None or data.run.meta.source_of("beta") in ("inferred", "default"):
        raise Skip("beta is not declared")
    fit = eval_identity(data)
    if not eval_identity_holds(fit) or abs(fit.beta / declared - 1) < 0.05:
        return []
    return [data.finding(
        "beta-mismatch", f"The logged rewards use beta {fit.beta:.3g}, not {declared:g}",
        f"On the eval set, rewards = beta * (logps - reference) holds exactly with beta "
        f"{fit.beta:.4g} (implied reference constant to {fit.drift:.2g} nats), not with the "
        f"recorded {declared:g}. The rewards were scaled with another beta than the one recorded.",
        split="eval", evidence={"declared_beta": declared, "fitted_beta": fit.beta, "drift": fit.drift})]
