"""Checks of the reference model: missing, tracking the policy, not the initial policy."""

from __future__ import annotations

import polars as pl

from dpodiag.checks.base import (
    Finding,
    RunData,
    Skip,
    check,
    require_reference_loss,
    require_steps,
)
from dpodiag.checks.eval_identity import (
    FROZEN_RELATIVE_TOLERANCE,
    eval_identity,
    eval_identity_holds,
)
from dpodiag.checks.per_example import example_summary, policy_movement
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


def _has_reference_columns(columns: list[str]) -> bool:
    return {"reference_chosen_logps", "reference_rejected_logps"} <= set(columns)


@check("reference-missing", "error", ("pairs",),
       meaning="A reference-based loss, but the log has no usable reference log-probs.",
       causes="Reference log-probs not logged, a failed join with a precomputed reference cache "
              "(all zero or null), or one constant written for every pair.",
       fix="Log reference_chosen_logps and reference_rejected_logps per pair, or the log-ratios.")
def reference_missing(data: RunData) -> list[Finding]:
    pairs = data.scan_pairs()
    spec = require_reference_loss(data)
    if spec is None:
        raise Skip("the loss type is unknown, so it is unknown whether a reference is needed")
    if data.run.column_mapping.get("chosen_logratio"):
        return []
    if not _has_reference_columns(data.pair_columns):
        return [data.finding("reference-missing", "No reference log-probs in a reference-based run",
                             f"The loss type is {spec.name}, which needs reference log-probs, but the "
                             "log has neither reference_chosen_logps/reference_rejected_logps nor "
                             "log-ratio columns. Rewards and margins cannot be computed; log the "
                             "reference log-probs per pair.",
                             evidence={"loss_type": spec.name, "columns": sorted(data.pair_columns)})]
    findings = []
    columns = ("reference_chosen_logps", "reference_rejected_logps")
    stats = data.collect(pairs.select(
        pl.len().alias("rows"),
        *(expr for column in columns for expr in (
            pl.col(column).count().alias(f"{column}/values"),
            pl.col(column).null_count().alias(f"{column}/nulls"),
            (pl.col(column) == 0).all().alias(f"{column}/all_zero"),
            pl.col(column).is_nan().sum().alias(f"{column}/nan"),
            pl.col(column).min().alias(f"{column}/min"), pl.col(column).max().alias(f"{column}/max"),
            pl.col(column).drop_nulls().first().alias(f"{column}/first"))))).row(0, named=True)
    rows = stats["rows"]
    for column in columns:
        count, nulls, all_zero = stats[f"{column}/values"], stats[f"{column}/nulls"], stats[f"{column}/all_zero"]
        if count == 0 or all_zero or _single_value(stats, column):
            kind = ("empty" if count == 0 else "all zero" if all_zero
                    else f"constant ({stats[f'{column}/first']})")
            findings.append(data.finding(
                "reference-missing", f"{column} is {kind}",
                f"{column} is {kind} over {rows} rows ({nulls} null), so log-ratios equal "
                "the policy log-probs. A reference cache join that failed, or a placeholder value, "
                "usually causes this; recompute the reference log-probs.",
                evidence={"column": column, "rows": rows, "nulls": nulls}))
    return findings


def _single_value(stats: dict, column: str) -> bool:
    """True when the non-null values of `column` are all one value (NaN counts as one value):
    all NaN, or no NaN and min == max, which min and max, skipping NaN, tell without a set."""
    nan, count = stats[f"{column}/nan"], stats[f"{column}/values"]
    return nan == count or (nan == 0 and stats[f"{column}/min"] == stats[f"{column}/max"])


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
    first = data.run.steps[0]
    later = data.scan_pairs().filter((pl.col("step") > first) & pl.col("chosen_logratio").is_finite()
                                     & pl.col("rejected_logratio").is_finite())
    zero = (pl.col("chosen_logratio") == 0) & (pl.col("rejected_logratio") == 0)
    later_rows, zero_share, later_step = data.collect(
        later.select(pl.len(), zero.mean(), pl.col("step").min())).row(0)
    if later_rows == 0:
        raise Skip("no scored pair after the first logged step")

    # Log-ratios that vanish exactly at every step after the first.
    zero_share = float(zero_share)
    if zero_share < 0.99:
        return []

    # The policy must have moved, or the zeros are explained by a policy that never changed.
    # When the log cannot tell (no example scored twice, or no policy log-probs), zeros at every
    # later step are still an error: one of the two bugs is there.
    moved = policy_movement(data)
    if moved == 0:
        return []
    if moved is None:
        movement = ("The log cannot tell whether the policy moved (no example is scored at two "
                    "steps), so a policy that never updates would look the same; either way the "
                    "objective has no signal. If gradients flow, the reference")
    else:
        movement = (f"The policy's log-prob of the same examples changed by up to {moved:.3g} nats, "
                    "so the reference")
    return [data.finding(
        "reference-tracks-policy", "Reference log-probs equal the policy's after the first update",
        f"{zero_share:.1%} of the {later_rows} pairs scored after step {first} have log-ratios of "
        f"exactly 0: rewards and margins are 0 and the loss stays at its zero-margin value. "
        f"{movement} is computed with the training weights. Score it with a frozen copy of the "
        "initial policy.",
        step=int(later_step),
        evidence={"zero_logratio_share": zero_share, "pairs": later_rows,
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
    logps_range = evidence.get("logps_chosen_range")
    if flowing is not None:
        movement = ", while gradients flow (grad_norm > 0)."
    elif logps_range is not None and logps_range > 0:
        movement = f", while the policy's logps/chosen moves over {logps_range:.3g} nats."
    elif logps_range is None:
        movement = (". grad_norm and the policy log-probs are not logged, so a policy that never "
                    "updates would look the same.")
    else:
        movement = (". grad_norm is not logged and the policy log-probs do not move, so the policy "
                    "may never update.")
    return [data.finding(
        "reference-tracks-policy", "Rewards are exactly 0 at every step",
        f"rewards/chosen and rewards/rejected are exactly 0 in {zero_share:.0%} of the "
        f"{later.height} train records after the first{movement} The reference log-probs "
        "equal the policy's: the reference is computed with the training weights (a LoRA adapter "
        "not disabled, a shared model), or beta is 0.",
        split="train", step=int(later.get_column("step").min()), evidence=evidence)]


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
    pairs = data.scan_pairs()
    spec = require_reference_loss(data)
    first = int(data.run.steps[0])
    if first != 0:
        raise Skip(f"the first logged step is {first}, so no pair was scored before the first update")
    start = data.collect(pairs.filter((pl.col("step") == 0) & pl.col("chosen_logratio").is_finite()
                                      & pl.col("rejected_logratio").is_finite()))
    if start.height == 0 or not _has_reference_columns(start.columns):
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
        # The train split's mean, as a trainer logs it, when step 0 has train pairs.
        split = "train" if "split" in start.columns and (start.get_column("split") == "train").any() else None
        rows = start.filter(pl.col("split") == split) if split else start
        logged = rows.get_column("loss").filter(rows.get_column("loss").is_finite()).mean()
        expected = spec.zero_margin(data.run.meta.beta or 0.1, data.run.meta.label_smoothing)
        if logged is not None:
            evidence.update(first_loss=float(logged), zero_margin_loss=expected)
            where = "train loss" if split else "loss"
            if abs(logged - expected) <= 1e-3 * abs(expected):
                # Equal offsets on chosen and rejected cancel in the margin, so the loss is blind.
                loss_text = (f" The mean step-0 {where} is {logged:.4f}, the zero-margin value, "
                             "because the log-ratios of chosen and rejected are alike and cancel "
                             "in the margin; the rewards are not 0 all the same.")
            else:
                loss_text = (f" The mean step-0 {where} is {logged:.4f}, against {expected:.4f} "
                             "when policy equals reference.")
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
    if not _has_reference_columns(data.pair_columns) or "example_id" not in data.pair_columns:
        raise Skip("needs reference log-probs and example ids")

    # Spread of each example's reference log-probs over the steps that scored it, against 1% of
    # their size, on the chosen and on the rejected side: padding or a mask bug may touch one
    # side only. The rejected size is the middle of its range, |max - spread / 2|.
    summary = example_summary(data)

    def excess(spread: pl.Expr, size: pl.Expr) -> pl.Expr:
        return spread / pl.max_horizontal(pl.lit(1e-3), FROZEN_RELATIVE_TOLERANCE * size)

    chosen = excess(pl.col("reference_spread"), pl.col("reference_size"))
    rejected_spread = pl.col("reference_spread")
    rejected = pl.lit(0.0)
    if "reference_rejected_spread" in summary.columns:
        rejected_spread = pl.col("reference_rejected_spread")
        rejected_size = (pl.col("reference_rejected_max") - rejected_spread / 2).abs()
        rejected = excess(rejected_spread, rejected_size).fill_null(0.0)
    wider = rejected > chosen
    spread = (summary.filter(pl.col("reference_scored") > 1)
              .select(pl.max_horizontal(chosen, rejected).alias("excess"), wider.alias("rejected_wider"),
                      pl.when(wider).then(rejected_spread).otherwise(pl.col("reference_spread")).alias("spread")))
    if spread.height == 0:
        raise Skip("no example is scored at more than one step")
    if _ratios_vanish(data):
        return []  # the reference is the policy itself: reference-tracks-policy reports it
    moved = spread.filter(pl.col("excess") > 1)
    share = moved.height / spread.height
    if share < MOVED_SHARE:
        return []
    median_spread = float(moved.get_column("spread").median())
    side = "rejected" if moved.get_column("rejected_wider").mean() > 0.5 else "chosen"
    return [data.finding(
        "reference-not-frozen", "The reference log-probs of the same examples change between steps",
        f"{moved.height} of {spread.height} examples scored more than once ({share:.0%}) have a "
        f"reference log-prob that moved by more than 1% (median change {median_spread:.3g} nats, "
        f"mostly in the {side} response). A frozen reference gives the same value every time: the "
        "reference is updated, scored with dropout on, or its log-probs depend on the batch "
        "(padding in the mask).",
        evidence={"examples_moved": moved.height, "examples_repeated": spread.height,
                  "share": share, "median_change": median_spread,
                  "max_change": float(moved.get_column("spread").max()), "side": side})]


def _ratios_vanish(data: RunData) -> bool:
    """True when the log-ratios are exactly 0 for nearly every pair."""
    zero = (pl.col("chosen_logratio") == 0) & (pl.col("rejected_logratio") == 0)
    return float(data.collect(data.scan_pairs().select(zero.mean())).item()) >= 0.99


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
    if evidence.get("explained_by_margin"):
        chosen, rejected = evidence["first_rewards"]
        beta, needed = data.run.meta.beta or 0.1, evidence.get("beta_within_numerics")
        # Rewards are beta times log-ratios, so under a larger beta the same rewards are smaller
        # log-ratios. The message names that reading when such a beta is at most 1.
        other_beta = (f" If beta is in fact {needed:.2g} or more rather than {beta:g}, these rewards "
                      "are log-ratios within numerics, and beta is what is wrong." if needed and beta < needed <= 1 else "")
        return [data.finding(
            "reference-not-initial-policy", "The rewards before any update are not 0",
            f"Before any update the {evidence['split']} rewards are {chosen:.4g} (chosen) and "
            f"{rejected:.4g} (rejected), beyond what numerics explain, where a reference equal to "
            f"the initial policy gives 0; the loss {evidence['first_loss']:.4g} agrees with those "
            "margins. The reference is another checkpoint, dtype or template, or is scored with "
            f"dropout on.{other_beta}", split=evidence["split"], step=evidence["step"], evidence=evidence)]
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
