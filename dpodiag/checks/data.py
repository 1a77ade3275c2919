"""Checks of the logged values themselves: non-finite values, impossible log-probs, too little data."""

from __future__ import annotations

import polars as pl

from dpodiag.checks.base import Finding, RunData, Skip, check

LOGPS_COLUMNS = ["policy_chosen_logps", "policy_rejected_logps",
                 "reference_chosen_logps", "reference_rejected_logps"]
VALUE_COLUMNS = [*LOGPS_COLUMNS, "chosen_logratio", "rejected_logratio", "loss"]
STEP_VALUE_COLUMNS = ["loss", "rewards_chosen", "rewards_rejected", "rewards_margins",
                      "logps_chosen", "logps_rejected", "logits_chosen", "logits_rejected", "grad_norm"]

# Fewer train steps or pairs than this cannot show a trend; trend checks skip themselves.
MIN_STEPS = 5
MIN_PAIRS = 32


@check("non-finite-values", "error", ("pairs", "steps"),
       meaning="NaN or Inf in log-probs, rewards, loss or logits.",
       causes="fp16 overflow, a division by an empty mask, a learning rate that diverged.",
       fix="Find the first step with a non-finite value; use bf16 or fp32, check masks and the "
           "learning rate.")
def non_finite_values(data: RunData) -> list[Finding]:
    if data.pairs is not None:
        frame, columns, unit = data.pairs, [c for c in VALUE_COLUMNS if c in data.pairs.columns], "pairs"
    else:
        frame, columns, unit = data.steps, [c for c in STEP_VALUE_COLUMNS if c in data.steps.columns], "records"
    if not columns:
        raise Skip("no numeric value columns")
    bad_by_column = {c: int((~frame.get_column(c).is_finite() & frame.get_column(c).is_not_null()).sum())
                     for c in columns}
    bad_by_column = {c: n for c, n in bad_by_column.items() if n}
    if not bad_by_column:
        return []
    any_bad = pl.any_horizontal([~pl.col(c).is_finite() & pl.col(c).is_not_null() for c in bad_by_column])
    bad = frame.filter(any_bad)
    first_step = int(bad.get_column("step").min())
    steps = sorted(set(bad.get_column("step").to_list()))
    share = bad.height / frame.height
    listed = ", ".join(f"{c} ({n})" for c, n in bad_by_column.items())
    return [data.finding(
        "non-finite-values", f"NaN or Inf from step {first_step}",
        f"{bad.height} of {frame.height} {unit} ({share:.1%}) hold NaN or Inf, first at step "
        f"{first_step}, in {len(steps)} step(s); columns: {listed}. fp16 overflow or a division "
        "by an empty mask is the usual cause; inspect the batch of the first step.",
        step=first_step,
        evidence={"rows": bad.height, "share": share, "first_step": first_step,
                  "steps": steps[:20], "columns": bad_by_column})]


@check("invalid-logprobs", "error", ("pairs",),
       meaning="Sequence log-probs above 0, exactly 0 (an empty response mask), or lengths <= 0.",
       causes="A mask that selects no token, logits used in place of log-probs, lengths counted "
              "after truncation removed the response.",
       fix="Check the response mask and that log-probs come from log_softmax of the logits.")
def invalid_logprobs(data: RunData) -> list[Finding]:
    if data.pairs is None:
        raise Skip("needs a pair log")
    pairs = data.pairs
    problems: dict[str, dict[str, int]] = {}
    for column in [c for c in LOGPS_COLUMNS if c in pairs.columns]:
        values = pairs.get_column(column)
        # NaN compares above every number in polars; non-finite values are another check's.
        positive = int((values.is_finite() & (values > 1e-6)).sum())
        zero = int((values == 0).sum())
        if positive or zero:
            problems[column] = {"positive": positive, "zero": zero}
    for column in [c for c in ("chosen_length", "rejected_length") if c in pairs.columns]:
        nonpositive = int((pairs.get_column(column) <= 0).sum())
        if nonpositive:
            problems[column] = {"non_positive": nonpositive}
    if not problems:
        return []
    listed = "; ".join(f"{c}: " + ", ".join(f"{n} {kind.replace('_', '-')}" for kind, n in counts.items())
                       for c, counts in problems.items())
    return [data.finding(
        "invalid-logprobs", "Impossible sequence log-probs or lengths",
        f"A sequence log-prob is a sum of log-probabilities, so it is < 0 for a non-empty response. "
        f"Found {listed} (of {pairs.height} rows). A value of exactly 0 means the response mask "
        "selected no token; a positive value means logits or another quantity were logged.",
        evidence={"rows": pairs.height, "problems": problems})]


@check("too-little-data", "warning", ("pairs", "steps"),
       meaning="Too few steps or pairs to judge trends; checks that need more are skipped.",
       causes="A smoke test, a run that crashed early, or a log cut short.",
       fix="Log more steps (logging_steps=1) or run longer before judging the dynamics.")
def too_little_data(data: RunData) -> list[Finding]:
    train = data.split_steps("train")
    steps = train.height
    pairs = int(data.pairs.filter(pl.col("split") == "train").height) if data.pairs is not None else None
    short_steps = steps < MIN_STEPS
    short_pairs = pairs is not None and pairs < MIN_PAIRS
    if not (short_steps or short_pairs):
        return []
    what = f"{steps} train step(s)" + (f" and {pairs} train pair(s)" if pairs is not None else "")
    return [data.finding(
        "too-little-data", "Too little data to judge the run",
        f"The log has {what}; at least {MIN_STEPS} steps"
        + (f" and {MIN_PAIRS} pairs" if pairs is not None else "")
        + " are needed to judge trends. Checks of trends are skipped; a verdict needs a longer log.",
        split="train", evidence={"train_steps": steps, "train_pairs": pairs})]
