"""Checks of the logged values themselves: non-finite values, impossible log-probs, too little data."""

from __future__ import annotations

import polars as pl

from dpodiag.checks.base import Finding, RunData, Skip, check
from dpodiag.checks.per_example import example_summary, identical_responses
from dpodiag.compute.moments import PLAUSIBLE_PER_TOKEN_NATS, correlation, mask_column, step_sums
from dpodiag.compute.infer import MEAN_MAX_NATS
from dpodiag.compute.quantiles import median, median_above_counts
from dpodiag.schema import SUMMARY_FORMATS

LOGPS_COLUMNS = ["policy_chosen_logps", "policy_rejected_logps",
                 "reference_chosen_logps", "reference_rejected_logps"]
VALUE_COLUMNS = [*LOGPS_COLUMNS, "chosen_logratio", "rejected_logratio", "loss"]
STEP_VALUE_COLUMNS = ["loss", "rewards_chosen", "rewards_rejected", "rewards_margins",
                      "logps_chosen", "logps_rejected", "logits_chosen", "logits_rejected", "grad_norm"]

# Fewer train steps or pairs than this cannot show a trend; trend checks skip themselves.
MIN_STEPS = 5
MIN_PAIRS = 32


@check("non-finite-values", "error", ("pairs", "steps", "unpaired"),
       meaning="NaN or Inf in log-probs, rewards, loss or logits. A step log whose grad_norm "
               "alone is NaN or Inf at some steps is not reported: fp16 loss scaling skips the "
               "update of those steps and training goes on.",
       causes="fp16 overflow, a division by an empty mask, a learning rate that diverged.",
       fix="Find the first step with a non-finite value; use bf16 or fp32, check masks and the "
           "learning rate.")
def non_finite_values(data: RunData) -> list[Finding]:
    if data.pairs is not None:
        table, columns, unit = data.scan_pairs(), [c for c in VALUE_COLUMNS if c in data.pair_columns], "pairs"
    else:
        table, columns, unit = data.steps.lazy(), [c for c in STEP_VALUE_COLUMNS if c in data.steps.columns], "records"
    if not columns:
        raise Skip("no numeric value columns")
    is_bad = {c: ~pl.col(c).is_finite() & pl.col(c).is_not_null() for c in columns}
    counts = data.collect(table.select(pl.len().alias("rows"), *(is_bad[c].sum().alias(c) for c in columns)))
    bad_by_column = {c: int(counts.get_column(c)[0]) for c in columns}
    bad_by_column = {c: n for c, n in bad_by_column.items() if n}
    if not bad_by_column or (data.pairs is None and _skipped_updates(data, bad_by_column)):
        return []

    # The rows with a non-finite value: how many, at which steps, and whether the loss hides them.
    bad = table.filter(pl.any_horizontal([is_bad[c] for c in bad_by_column]))
    summary = [pl.len().alias("rows")]
    # Null inputs become NaN log-ratios: name them, since the derived column alone hides the cause.
    inputs = [c for c in (*LOGPS_COLUMNS, "loss") if c in columns] if data.pairs is not None else []
    summary += [pl.col(c).null_count().alias(f"null {c}") for c in inputs]
    if "loss" in columns:
        # NaN compares unequal to 0, so this counts finite zeros only.
        summary.append((pl.col("loss") == 0).sum().alias("zero_loss"))
    bad_summary, bad_steps = pl.collect_all([bad.select(summary), bad.select(pl.col("step").unique().sort())],
                                            engine=data.engine)
    rows, total = bad_summary.get_column("rows")[0], counts.get_column("rows")[0]
    steps = bad_steps.get_column("step").to_list()
    first_step = int(steps[0])
    share = rows / total
    splits = _splits_by_column(data, bad, {c: is_bad[c] for c in bad_by_column})
    listed = ", ".join(f"{c} ({n}{splits[c]})" for c, n in bad_by_column.items())
    nulls = {c: int(bad_summary.get_column(f"null {c}")[0]) for c in inputs}
    nulls = {c: n for c, n in nulls.items() if n}
    null_text = ""
    if nulls:
        null_text = (" These rows hold nulls in the input columns "
                     + ", ".join(f"{c} ({n})" for c, n in nulls.items())
                     + ": a writer that stores NaN as null (pandas does) or a value that was not logged.")
    hidden = ""
    zero = int(bad_summary.get_column("zero_loss")[0]) if "zero_loss" in bad_summary.columns else 0
    if zero:
        hidden = (f" The logged loss is exactly 0 at {zero} of these {unit}: a loss of 0 next to "
                  "NaN metrics hides the NaN, it is not a converged run.")
    return [data.finding(
        "non-finite-values", f"NaN or Inf from step {first_step}",
        f"{rows} of {total} {unit} ({share:.1%}) hold NaN or Inf, first at step "
        f"{first_step}, in {len(steps)} step(s); columns: {listed}.{null_text}{hidden} fp16 overflow or a "
        "division by an empty mask is the usual cause; inspect the batch of the first step.",
        step=first_step,
        evidence={"rows": rows, "share": share, "first_step": first_step,
                  "steps": steps[:20], "columns": bad_by_column, **({"null_inputs": nulls} if nulls else {})})]


def _skipped_updates(data: RunData, bad_by_column: dict[str, int]) -> bool:
    """True when grad_norm is the only non-finite step metric, in under half of the train
    records and not in the last one. That is fp16 loss scaling (torch's GradScaler) at work: it
    skips the update of a step whose gradients overflow, and training goes on."""
    if set(bad_by_column) != {"grad_norm"}:
        return False
    norms = data.split_steps("train").get_column("grad_norm").drop_nulls()
    finite = norms.is_finite()
    return norms.len() > 0 and bool(finite[-1]) and float((~finite).mean()) < 0.5


def _splits_by_column(data: RunData, bad_rows: pl.LazyFrame, is_bad: dict[str, pl.Expr]) -> dict[str, str]:
    """Return, per column, ", eval" or ", train and eval": the splits of its non-finite values.

    One pass over `bad_rows` (the rows with a non-finite value) counts them per split. A run
    with one split gets "" for every column.
    """
    if len(data.run.splits) < 2:
        return {column: "" for column in is_bad}
    counts = data.collect(bad_rows.group_by("split").agg(expr.sum().alias(c) for c, expr in is_bad.items()))
    text = {}
    for column in is_bad:
        present = set(counts.filter(pl.col(column) > 0).get_column("split").to_list())
        text[column] = ", " + " and ".join(split for split in data.run.splits if split in present)
    return text


@check("invalid-logprobs", "error", ("pairs",),
       meaning="Sequence log-probs above 0, exactly 0 (an empty response mask), or lengths <= 0.",
       causes="A mask that selects no token, logits used in place of log-probs, lengths counted "
              "after truncation removed the response.",
       fix="Check the response mask and that log-probs come from log_softmax of the logits.")
def invalid_logprobs(data: RunData) -> list[Finding]:
    pairs = data.scan_pairs()
    logps = [c for c in LOGPS_COLUMNS if c in data.pair_columns]
    lengths = [c for c in ("chosen_length", "rejected_length") if c in data.pair_columns]
    # NaN compares above every number in polars; non-finite values are another check's.
    totals = data.collect(pairs.select(
        pl.len().alias("rows"),
        *((pl.col(c).is_finite() & (pl.col(c) > 0)).sum().alias(f"{c}/positive") for c in logps),
        *((pl.col(c) == 0).sum().alias(f"{c}/zero") for c in logps),
        *((pl.col(c) <= 0).sum().alias(f"{c}/non_positive") for c in lengths))).row(0, named=True)
    problems: dict[str, dict[str, int]] = {}
    for column in logps:
        positive, zero = int(totals[f"{column}/positive"]), int(totals[f"{column}/zero"])
        if positive or zero:
            problems[column] = {"positive": positive, "zero": zero}
    for column in lengths:
        nonpositive = int(totals[f"{column}/non_positive"])
        if nonpositive:
            problems[column] = {"non_positive": nonpositive}
    if not problems:
        return []
    rows = totals["rows"]
    listed = "; ".join(f"{c}: " + ", ".join(f"{n} {kind.replace('_', '-')}" for kind, n in counts.items())
                       for c, counts in problems.items())
    return [data.finding(
        "invalid-logprobs", "Impossible sequence log-probs or lengths",
        f"A sequence log-prob is a sum of log-probabilities, so it is < 0 for a non-empty response. "
        f"Found {listed} (of {rows} rows). A value of exactly 0 means the response mask "
        "selected no token; a positive value means logits or another quantity were logged.",
        evidence={"rows": rows, "problems": problems})]


@check("too-little-data", "warning", ("pairs", "steps", "unpaired"),
       meaning="Too few steps or pairs to judge trends; checks that need more are skipped.",
       causes="A smoke test, a run that crashed early, a log cut short, a file of final values "
              "only, or the log of another trainer (SFT).",
       fix="Pass the whole history of the DPO-family run (trainer_state.json, console output, "
           "W&B or TensorBoard files, or a pair log) rather than a summary or another trainer's "
           "log, log every step (logging_steps=1), or run longer.")
def too_little_data(data: RunData) -> list[Finding]:
    if data.pairs is None and not _has_preference_metrics(data.steps):
        return [data.finding(
            "too-little-data", "The log has no preference metrics",
            "The log has no rewards, margins, accuracies or per-response log-probs, so nothing "
            "about the preference objective can be judged (a log of SFT or another trainer "
            "reads like this). Pass the log of the DPO-family run, or a pair log.",
            evidence={"columns": sorted(data.steps.columns)})]
    train = data.split_steps("train")
    steps = train.height
    pairs = None
    if data.pairs is not None:
        pairs = int(data.collect(data.split_pairs("train").select(pl.len())).item())
    short_steps = steps < MIN_STEPS
    short_pairs = pairs is not None and pairs < MIN_PAIRS
    if not (short_steps or short_pairs):
        return []
    if data.run.format in SUMMARY_FORMATS:
        return [data.finding(
            "too-little-data", "Final values only: trends cannot be judged",
            f"{data.run.source} keeps the final value of each metric, not its history, so checks "
            "of trends are skipped and only the final values were checked. For a verdict, pass "
            "the run's history: trainer_state.json, the console output, W&B's output.log or "
            "run-<id>.wandb, or the TensorBoard event file.",
            split="train", evidence={"train_steps": steps, "format": data.run.format})]
    what = f"{steps} train step(s)" + (f" and {pairs} train pair(s)" if pairs is not None else "")
    return [data.finding(
        "too-little-data", "Too little data to judge the run",
        f"The log has {what}; at least {MIN_STEPS} steps"
        + (f" and {MIN_PAIRS} pairs" if pairs is not None else "")
        + " are needed to judge trends. Checks of trends are skipped; a verdict needs a longer log.",
        split="train", evidence={"train_steps": steps, "train_pairs": pairs})]


PREFERENCE_METRICS = ("rewards_chosen", "rewards_rejected", "rewards_margins", "rewards_accuracies",
                      "logps_chosen", "logps_rejected")


def _has_preference_metrics(steps: pl.DataFrame) -> bool:
    """True when a step table has at least one value of a preference metric."""
    return any(c in steps.columns and steps.get_column(c).is_not_null().any() for c in PREFERENCE_METRICS)


@check("degenerate-pairs", "warning", ("pairs",),
       meaning="Chosen and rejected are identical for some pairs (h is exactly 0 at every step).",
       causes="Duplicate responses in the data, or truncation that cut both responses to the "
              "same tokens.",
       fix="Drop pairs whose responses are identical after tokenization and truncation.")
def degenerate_pairs(data: RunData) -> list[Finding]:
    pairs = data.scan_pairs()
    columns = set(data.pair_columns)
    if not {"policy_chosen_logps", "policy_rejected_logps"} <= columns:
        raise Skip("needs policy log-probs")
    if "example_id" in columns:
        per_example, unit = example_summary(data), "examples"
    else:
        query = pairs.group_by(["split", "step"]).agg(identical_responses(columns).all().alias("same"))
        per_example, unit = data.collect(query), "steps"
    same = int(per_example.get_column("same").sum())
    if same == 0:
        return []
    share = same / per_example.height
    return [data.finding(
        "degenerate-pairs", f"{same} pair(s) have identical chosen and rejected responses",
        f"{same} of {per_example.height} {unit} ({share:.1%}) have exactly equal chosen and "
        "rejected log-probs at every scoring. Such pairs carry no preference and always cost "
        "the zero-margin loss; remove them from the data.",
        evidence={"degenerate": same, "total": per_example.height, "share": share})]


@check("duplicate-steps", "warning", ("pairs", "steps"),
       meaning="Repeated or non-monotonic steps, as a resumed run writes them, or an epoch that "
               "goes back while the steps increase.",
       causes="A run resumed from a checkpoint that appends to the same log, or two runs "
              "written into one file.",
       fix="Keep the records of the last attempt for each step, or split the log per attempt.")
def duplicate_steps(data: RunData) -> list[Finding]:
    if data.pairs is not None:
        if "example_id" not in data.pair_columns:
            raise Skip("needs example ids to tell a repeated pair from another pair")
        # The (split, step, example_id) combinations are counted, a larger group-by, only when
        # a step has fewer distinct id hashes than rows. Equal ids hash equally, so a repeat
        # always shows. A hash collision only costs the exact count, which refutes it.
        moments = data.step_moments()
        if not (moments.get_column("ids_distinct") < moments.get_column("rows")).any():
            return []
        key = ["split", "step", "example_id"]
        repeated = data.collect(data.scan_pairs().group_by(key).len().filter(pl.col("len") > 1))
        if repeated.height == 0:
            return []
        steps = sorted(set(repeated.get_column("step").to_list()))
        return [data.finding(
            "duplicate-steps", f"{repeated.height} pair(s) logged twice at the same step",
            f"{repeated.height} (split, step, example_id) combinations appear more than once, at "
            f"{len(steps)} step(s) from step {steps[0]}. A resumed run or a merged log repeats "
            "records; all copies are averaged into the step aggregates.",
            step=steps[0], evidence={"repeated": repeated.height, "steps": steps[:20]})]
    if "record" not in data.steps.columns:
        raise Skip("the log keeps no record order")
    findings = []
    for split in data.run.splits:
        rows = _drop_repeated_records(data.steps.filter(pl.col("split") == split).sort("record"))
        steps = rows.get_column("step")
        # Counted steps are dpodiag's numbering (an eval record takes the step of the train
        # record before it), so only the epoch can show a repeat in them.
        backwards = 0 if data.run.step_source == "counted" else int((steps.diff() <= 0).sum())
        if backwards == 0:
            findings += _epoch_restarts(data, split, rows)
            continue
        first = int(rows.filter(steps.diff() <= 0).get_column("step")[0])
        repeated = steps.len() - steps.n_unique()
        if repeated:
            cause = (f"{repeated} step number(s) occur more than once, as when a resumed run "
                     "appends to the log")
        else:
            cause = ("no step number occurs twice, so the records were written or merged out of "
                     "order rather than repeated")
        findings.append(data.finding(
            "duplicate-steps", f"The {split} steps repeat or go backwards {backwards} time(s)",
            f"In record order the {split} step number fails to increase {backwards} time(s), first "
            f"at step {first}: {cause}. Every record is kept; charts show the steps as they were "
            "logged.",
            split=split, step=first, evidence={"non_increasing": backwards, "first_step": first,
                                               "repeated_steps": repeated}))
    return findings


# An epoch value this much below the record before it is a restart, not rounding.
EPOCH_RESTART = 1e-3


def _epoch_restarts(data: RunData, split: str, rows: pl.DataFrame) -> list[Finding]:
    """Findings for an epoch that goes back while the steps increase. Steps counted from the
    record order (a log without a step key) always increase, so the epoch is the one sign of a
    second run appended to the same log."""
    if "epoch" not in rows.columns:
        return []
    drops = (rows.with_columns(pl.col("epoch").shift(1).alias("epoch_before"))
             .filter(pl.col("epoch") < pl.col("epoch_before") - EPOCH_RESTART))
    if drops.height == 0:
        return []
    first, before, after = drops.select("step", "epoch_before", "epoch").row(0)
    return [data.finding(
        "duplicate-steps", f"The {split} epoch goes back {drops.height} time(s)",
        f"In record order the {split} epoch falls {drops.height} time(s), first at step {first} "
        f"(from {before:g} to {after:g}), while the step numbers increase: two runs written into one "
        "log, or a run restarted from its start. The records are read as one run; split the log "
        "per run.", split=split, step=first,
        evidence={"epoch_restarts": drops.height, "first_step": first, "epoch_before": before,
                  "epoch_after": after})]


def _drop_repeated_records(rows: pl.DataFrame) -> pl.DataFrame:
    """Drop each record whose step and metric values equal the record before it, apart from
    timings (`extra_*` columns such as runtime). HF Trainer logs the evaluation that ends
    training again at the last evaluated step; identical copies repeat nothing."""
    metrics = [c for c in rows.columns if c not in ("run", "split", "record") and not c.startswith("extra_")]
    same = pl.all_horizontal([pl.col(c).eq_missing(pl.col(c).shift(1)) for c in metrics])
    return rows.filter(~same.fill_null(False))


# Summed log-probs grow in magnitude with the response length: the per-step correlation of
# |log-prob| with length is clearly positive for a correct mask (about 0.7 in the sample runs).
# Padding summed into the log-probs turns it negative, because shorter responses get more padding.
MASK_MIN_CORRELATION = 0.1


@check("mask-or-padding-suspect", "warning", ("pairs",),
       meaning="Summed log-probs do not scale with response length, or the per-token log-prob is "
               "implausible.",
       causes="Padding or prompt tokens inside the response mask, a mask applied to half the "
              "batch, lengths that do not describe the masked tokens.",
       fix="Check the response mask: prompt and padding excluded, first response token included.")
def mask_or_padding_suspect(data: RunData) -> list[Finding]:
    columns = set(data.pair_columns)
    if not {"chosen_length", "rejected_length"} <= columns:
        raise Skip("needs chosen_length and rejected_length")
    if data.run.meta.logps_normalisation == "mean":
        raise Skip("log-probs are per-token averages, which do not scale with length")
    moments = data.step_moments()
    if "mask_n" not in moments.columns:
        raise Skip("needs sequence log-probs")
    column = mask_column(data.pairs)
    other = column.replace("chosen", "rejected")

    # Per-step correlation of |log-prob| with length, chosen and rejected pooled, from the sums
    # of both splits of the step. Steps whose lengths do not vary are left out.
    sums = ["mask_n", "mask_sx", "mask_sy", "mask_sxx", "mask_syy", "mask_sxy", "mask_ymin", "mask_ymax"]
    per_step = (step_sums(moments, sums).filter(pl.col("mask_ymax") > pl.col("mask_ymin"))
                .select("step", correlation("mask").alias("r")).filter(pl.col("r").is_finite()))
    totals = moments.select(pl.col("mask_count", "mask_above", "mask_infinite").sum()).row(0)
    implausible = median_above_counts(*totals)

    def pooled(rows: pl.LazyFrame) -> pl.LazyFrame:
        return pl.concat([
            rows.select(pl.col(column).abs().alias("size"), pl.col("chosen_length").alias("length")),
            rows.select(pl.col(other).abs().alias("size"), pl.col("rejected_length").alias("length")),
        ]).filter(pl.col("size").is_finite())

    per_token_nats = pl.col("size") / pl.col("length")
    # The median per-token value itself is computed only for a finding, or when counts
    # cannot tell whether it is above PLAUSIBLE_PER_TOKEN_NATS.
    per_token = None
    if implausible is None:
        value = median(pooled(data.scan_pairs()), per_token_nats, data.engine)
        if value is None:
            raise Skip("no finite sequence log-prob with a length")
        per_token = float(value)
        implausible = not per_token <= PLAUSIBLE_PER_TOKEN_NATS
    if per_step.height < 3 and not implausible:
        raise Skip("too few steps with varying response lengths")
    correlation_median = float(per_step.get_column("r").median()) if per_step.height else None
    uncorrelated = correlation_median is not None and correlation_median < MASK_MIN_CORRELATION
    if not uncorrelated and not implausible:
        return []
    if per_token is None:
        per_token = float(median(pooled(data.scan_pairs()), per_token_nats, data.engine))
    cause = "Padding or prompt tokens in the response mask are the usual cause."
    size = median(pooled(data.scan_pairs()), pl.col("size"), data.engine)
    if uncorrelated and size is not None and size < MEAN_MAX_NATS:
        # Sequence log-probs a few nats in size that ignore the length are per-token averages.
        cause = (f"The log-probs are {size:.3g} nats in median size, as per-token averages are: if "
                 "the trainer averages over tokens (SimPO, IPO, length-normalised DPO), record "
                 "logps_normalisation 'mean'; else padding or prompt tokens in the response mask "
                 "are the usual cause.")
    return [data.finding(
        "mask-or-padding-suspect", "Log-probs do not follow the response length",
        f"The median per-step correlation between |{column}| and the response length is "
        f"{correlation_median if correlation_median is not None else float('nan'):.2f} (summed log-probs of a "
        f"correct mask correlate positively) and the median per-token log-prob is -{per_token:.3g} "
        f"nats. {cause}",
        evidence={"column": column, "median_correlation": correlation_median,
                  "median_per_token_nats": per_token, "median_abs_logps": size, "steps": per_step.height})]
