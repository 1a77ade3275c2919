"""Checks of the reference model: missing, tracking the policy, not the initial policy."""

from __future__ import annotations

import polars as pl

from dpodiag.checks.base import (
    Finding,
    RunData,
    Skip,
    check,
    require_pairs,
    require_reference_loss,
    require_steps,
)
from dpodiag.checks.eval_identity import (
    FROZEN_RELATIVE_TOLERANCE,
    eval_identity,
    eval_identity_holds,
)
from dpodiag.checks.first_record import (
    first_record_check,
    other_zero_margin_match,
    scale_factor_like,
)

# Summed log-probs computed twice from the same weights agree to float rounding; in bf16 a
# token's log-prob carries a relative error near 2**-8, so 1% of the sequence log-prob bounds
# what numerics alone explain. 0.05 nats is the floor for short responses.
STEP0_RELATIVE_TOLERANCE = 0.01
STEP0_ABSOLUTE_TOLERANCE = 0.05


def _has_reference_columns(pairs: pl.DataFrame) -> bool:
    return {"reference_chosen_logps", "reference_rejected_logps"} <= set(pairs.columns)


@check("reference-missing", "error", ("pairs",),
       meaning="A reference-based loss, but the log has no usable reference log-probs.",
       causes="Reference log-probs not logged, a failed join with a precomputed reference cache "
              "(all zero or null), or one constant written for every pair.",
       fix="Log reference_chosen_logps and reference_rejected_logps per pair, or the log-ratios.")
def reference_missing(data: RunData) -> list[Finding]:
    pairs = require_pairs(data)
    spec = require_reference_loss(data)
    if spec is None:
        raise Skip("the loss type is unknown, so it is unknown whether a reference is needed")
    if data.run.column_mapping.get("chosen_logratio"):
        return []
    if not _has_reference_columns(pairs):
        return [data.finding("reference-missing", "No reference log-probs in a reference-based run",
                             f"The loss type is {spec.name}, which needs reference log-probs, but the "
                             "log has neither reference_chosen_logps/reference_rejected_logps nor "
                             "log-ratio columns. Rewards and margins cannot be computed; log the "
                             "reference log-probs per pair.",
                             evidence={"loss_type": spec.name, "columns": sorted(pairs.columns)})]
    findings = []
    for column in ("reference_chosen_logps", "reference_rejected_logps"):
        values = pairs.get_column(column).drop_nulls()
        nulls = pairs.get_column(column).null_count()
        if values.len() == 0 or (values == 0).all() or values.n_unique() == 1:
            kind = ("empty" if values.len() == 0 else "all zero" if (values == 0).all()
                    else f"constant ({values[0]})")
            findings.append(data.finding(
                "reference-missing", f"{column} is {kind}",
                f"{column} is {kind} over {pairs.height} rows ({nulls} null), so log-ratios equal "
                "the policy log-probs. A reference cache join that failed, or a placeholder value, "
                "usually causes this; recompute the reference log-probs.",
                evidence={"column": column, "rows": pairs.height, "nulls": nulls}))
    return findings


@check("reference-tracks-policy", "error", ("pairs", "steps"),
       meaning="Log-ratios are exactly 0 after the first update while the policy log-probs move.",
       causes="Reference log-probs computed with the training weights (a shared model, a LoRA "
              "adapter that was not disabled), or a reference refreshed every step.",
       fix="Score the reference with a frozen copy of the initial policy (or with the adapter "
           "disabled) and check that it is never updated.")
def reference_tracks_policy(data: RunData) -> list[Finding]:
    require_reference_loss(data)
    if data.pairs is None:
        return _tracks_policy_in_steps(data)
    pairs = data.pairs
    first = pairs.get_column("step").min()
    later = pairs.filter((pl.col("step") > first) & pl.col("chosen_logratio").is_finite()
                         & pl.col("rejected_logratio").is_finite())
    if later.height == 0:
        raise Skip("no scored pair after the first logged step")

    # Log-ratios that vanish exactly at every step after the first.
    zero = (later.get_column("chosen_logratio") == 0) & (later.get_column("rejected_logratio") == 0)
    zero_share = float(zero.mean())
    if zero_share < 0.99:
        return []

    # The policy must have moved, or the zeros are explained by a policy that never changed.
    moved = policy_movement(pairs)
    if moved is None:
        raise Skip("log-ratios are 0 but the log has no policy log-probs to tell whether the policy moved")
    if moved == 0:
        return []
    return [data.finding(
        "reference-tracks-policy", "Reference log-probs equal the policy's after the first update",
        f"{zero_share:.1%} of the {later.height} pairs scored after step {first} have log-ratios of "
        f"exactly 0, while the policy's log-prob of the same examples changed by up to {moved:.3g} "
        "nats. Rewards and margins are 0 and the loss stays at its zero-margin value: the reference "
        "is computed with the training weights. Score it with a frozen copy of the initial policy.",
        step=int(later.get_column("step").min()),
        evidence={"zero_logratio_share": zero_share, "pairs": later.height,
                  "policy_logps_change": moved})]


def _tracks_policy_in_steps(data: RunData) -> list[Finding]:
    """Step logs: rewards exactly 0 after the first record while gradients flow and logps move."""
    rows = require_steps(data, "train", ["rewards_chosen", "rewards_rejected"], 3)
    later = rows.slice(1)
    zero_share = float(((later.get_column("rewards_chosen") == 0)
                        & (later.get_column("rewards_rejected") == 0)).mean())
    if zero_share < 0.99:
        return []
    if "grad_norm" in later.columns and later.get_column("grad_norm").is_finite().any():
        flowing = float((later.get_column("grad_norm") > 0).mean())
        if flowing < 0.5:
            return []  # no gradient reached the policy: no-learning-signal reports it
    else:
        flowing = None
    evidence = {"zero_reward_share": zero_share, "records": later.height,
                "records_with_gradient": flowing}
    if "logps_chosen" in later.columns:
        evidence["logps_chosen_range"] = float(later.get_column("logps_chosen").max()
                                               - later.get_column("logps_chosen").min())
    gradient_text = ("while gradients flow (grad_norm > 0)" if flowing is not None
                     else "(grad_norm is not logged, so a policy that never updates would look the same)")
    return [data.finding(
        "reference-tracks-policy", "Rewards are exactly 0 at every step",
        f"rewards/chosen and rewards/rejected are exactly 0 in {zero_share:.0%} of the "
        f"{later.height} train records after the first, {gradient_text}. The reference log-probs "
        "equal the policy's: the reference is computed with the training weights (a LoRA adapter "
        "not disabled, a shared model), or beta is 0.",
        split="train", step=int(later.get_column("step").min()), evidence=evidence)]


def policy_movement(pairs: pl.DataFrame) -> float | None:
    """Largest change of one example's policy chosen log-prob across steps (nats).

    Without example ids, the range of the per-step mean is used instead. None without policy log-probs.
    """
    if "policy_chosen_logps" not in pairs.columns:
        return None
    finite = pairs.filter(pl.col("policy_chosen_logps").is_finite())
    if "example_id" in finite.columns and finite.get_column("example_id").null_count() < finite.height:
        spread = (finite.group_by(["split", "example_id"])
                  .agg((pl.col("policy_chosen_logps").max() - pl.col("policy_chosen_logps").min()).alias("d")))
        return float(spread.get_column("d").max() or 0.0)
    means = finite.group_by(["split", "step"]).agg(pl.col("policy_chosen_logps").mean().alias("m"))
    return float(means.get_column("m").max() - means.get_column("m").min())


@check("reference-not-initial-policy", "error", ("pairs", "steps"),
       meaning="Before any update, the log-ratios are not ~0: the reference is not the policy's "
               "starting point.",
       causes="A reference loaded from another checkpoint (base model vs SFT adapter), another "
              "dtype or chat template, or scored with dropout on.",
       fix="Load the reference from the exact checkpoint the policy starts from, in the same "
           "precision and template, in eval mode.")
def reference_not_initial_policy(data: RunData) -> list[Finding]:
    if data.pairs is None:
        return _first_record_not_initial(data)
    pairs = require_pairs(data)
    spec = require_reference_loss(data)
    first = int(pairs.get_column("step").min())
    if first != 0:
        raise Skip(f"the first logged step is {first}, so no pair was scored before the first update")
    start = pairs.filter((pl.col("step") == 0) & pl.col("chosen_logratio").is_finite()
                         & pl.col("rejected_logratio").is_finite())
    if start.height == 0 or not _has_reference_columns(start):
        raise Skip("no finite reference log-probs at step 0")

    # Typical size of the step-0 log-ratios against what numerics alone explain.
    ratios = pl.concat([start.get_column("chosen_logratio"), start.get_column("rejected_logratio")])
    reference = pl.concat([start.get_column("reference_chosen_logps"),
                           start.get_column("reference_rejected_logps")])
    typical = float(ratios.abs().median())
    scale = float(reference.abs().median())
    tolerance = max(STEP0_ABSOLUTE_TOLERANCE, STEP0_RELATIVE_TOLERANCE * scale)
    if typical <= tolerance:
        return []

    evidence = {"median_abs_logratio": typical, "median_abs_reference_logps": scale,
                "tolerance": tolerance, "pairs": start.height,
                "mean_chosen_logratio": float(start.get_column("chosen_logratio").mean()),
                "mean_rejected_logratio": float(start.get_column("rejected_logratio").mean())}
    loss_text = ""
    if spec is not None and spec.zero_margin is not None and "loss" in start.columns:
        logged = start.get_column("loss").filter(start.get_column("loss").is_finite()).mean()
        expected = spec.zero_margin(data.run.meta.beta or 0.1, data.run.meta.label_smoothing)
        if logged is not None:
            evidence.update(first_loss=float(logged), zero_margin_loss=expected)
            loss_text = f" The step-0 loss is {logged:.4f}, against {expected:.4f} when policy equals reference."
    return [data.finding(
        "reference-not-initial-policy", "Reference differs from the initial policy at step 0",
        f"Before any update the median |log-ratio| is {typical:.3g} nats (tolerance {tolerance:.3g}, "
        f"1% of the median |reference log-prob| {scale:.3g}).{loss_text} The reference is not the "
        "checkpoint the policy starts from, or it is scored differently (dtype, template, dropout).",
        step=0, evidence=evidence)]


# Share of repeatedly scored examples whose reference moved, above which the reference moves.
MOVED_SHARE = 0.1


@check("reference-not-frozen", "error", ("pairs", "steps"),
       meaning="The reference log-prob of the same example changes between steps.",
       causes="A reference that shares weights with the policy or is refreshed (an adapter toggle "
              "bug, TR-DPO sync), a reference scored with dropout on, or padding counted in the "
              "log-probs so that the value depends on the batch.",
       fix="Score the reference once with a frozen model in eval mode (or precompute it), and "
           "mask padding out of the log-probs.")
def reference_not_frozen(data: RunData) -> list[Finding]:
    require_reference_loss(data)
    if data.run.meta.trainer_config.get("sync_ref_model"):
        raise Skip("the trainer refreshes the reference on purpose (sync_ref_model)")
    if data.pairs is None:
        return _eval_identity_drift(data)
    pairs = require_pairs(data)
    if not _has_reference_columns(pairs) or "example_id" not in pairs.columns:
        raise Skip("needs reference log-probs and example ids")

    # Spread of each example's reference log-prob over the steps that scored it.
    spread = (pairs.filter(pl.col("reference_chosen_logps").is_finite())
              .group_by(["split", "example_id"])
              .agg(pl.len().alias("scored"),
                   (pl.col("reference_chosen_logps").max() - pl.col("reference_chosen_logps").min()).alias("spread"),
                   pl.col("reference_chosen_logps").abs().mean().alias("size"))
              .filter(pl.col("scored") > 1))
    if spread.height == 0:
        raise Skip("no example is scored at more than one step")
    if _ratios_vanish(pairs):
        return []  # the reference is the policy itself: reference-tracks-policy reports it
    tolerance = pl.max_horizontal(pl.lit(1e-3), FROZEN_RELATIVE_TOLERANCE * pl.col("size"))
    moved = spread.filter(pl.col("spread") > tolerance)
    share = moved.height / spread.height
    if share < MOVED_SHARE:
        return []
    median_spread = float(moved.get_column("spread").median())
    return [data.finding(
        "reference-not-frozen", "The reference log-probs of the same examples change between steps",
        f"{moved.height} of {spread.height} examples scored more than once ({share:.0%}) have a "
        f"reference chosen log-prob that moved by more than 1% (median change {median_spread:.3g} "
        "nats). A frozen reference gives the same value every time: the reference is updated, "
        "scored with dropout on, or its log-probs depend on the batch (padding in the mask).",
        evidence={"examples_moved": moved.height, "examples_repeated": spread.height,
                  "share": share, "median_change": median_spread,
                  "max_change": float(moved.get_column("spread").max())})]


def _ratios_vanish(pairs: pl.DataFrame) -> bool:
    """True when the log-ratios are exactly 0 for nearly every pair."""
    zero = (pairs.get_column("chosen_logratio") == 0) & (pairs.get_column("rejected_logratio") == 0)
    return float(zero.mean()) >= 0.99


def _eval_identity_drift(data: RunData) -> list[Finding]:
    """Step logs: on a fixed eval set, logps - rewards/beta is the mean reference log-prob.

    The best beta for all evaluations leaves no drift beyond numerics when the reference is
    frozen; a wrong recorded beta alone is beta-mismatch, not a moving reference.
    """
    fit = eval_identity(data)
    if eval_identity_holds(fit):
        return []
    rows = data.cache["eval_identity_rows"]
    return [data.finding(
        "reference-not-frozen", "The implied eval reference log-prob drifts",
        f"On the eval set, logps - rewards/beta is the mean reference log-prob and must stay "
        f"constant. With the best-fitting beta ({fit.beta:.4g}) it still moves by {fit.drift:.3g} "
        f"nats across {rows} evaluations (mean size {fit.scale:.3g}). The reference moves, or the "
        "eval set changes between evaluations.",
        split="eval", evidence={"drift": fit.drift, "fitted_beta": fit.beta, "scale": fit.scale,
                                "evaluations": rows})]


def _first_record_not_initial(data: RunData) -> list[Finding]:
    """Step logs: the first loss before any update is far from the zero-margin value."""
    result = first_record_check(data)
    if result is None:
        return []
    evidence, rewards_zero = result
    if rewards_zero:
        return []  # policy equals reference, so a wrong loss is loss-scale-mismatch's to report
    if "first_rewards" not in evidence and (scale_factor_like(evidence["ratio"])
                                            or other_zero_margin_match(data, evidence) is not None):
        return []  # without rewards, a scaled loss or another loss variant explains it as well
    return [data.finding(
        "reference-not-initial-policy", "The first loss is not the zero-margin value",
        f"Before any update the {evidence['split']} loss is {evidence['first_loss']:.4g}; with the "
        f"reference equal to the initial policy it would be {evidence['zero_margin_loss']:.4g} "
        f"({evidence['loss_type']}, {evidence['loss_type_source']}). The reference is another "
        "checkpoint, dtype or template, or is scored with dropout on.",
        split=evidence["split"], step=evidence["step"], evidence=evidence)]
