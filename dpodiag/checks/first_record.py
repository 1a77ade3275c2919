"""Step logs: the records computed before any update, and what their loss says.

Before any update the policy equals the reference, so the logged loss is the loss type's
zero-margin value (ln 2 for sigmoid), or its value at the small margins that the rewards log. A different value points at the reference, a scaled loss,
or another loss variant; the eval identity gives beta where evaluations are logged.
"""

from __future__ import annotations

import math

import polars as pl
import torch

from dpodiag.checks.base import Finding, RunData, Skip, require_reference_loss
from dpodiag.compute.losses import LOSSES, PairBatch


# Frameworks whose step logs come from HF Trainer, whose step is the optimizer step.
HF_TRAINER_FRAMEWORKS = ("trl", "llamafactory")


def records_before_update(data: RunData) -> list[pl.DataFrame]:
    """Return the records whose pairs were scored with the policy equal to the reference.

    These are an evaluation at step 0, and the first train record when it is logged at step 0
    or 1 and covers that one step only: the next record is at step 2, or HF Trainer wrote the
    log, or the dialect logs single steps. The loss logged at step 1 comes from the forward pass
    before the first update. Without such a train record, the first train record whose rewards
    are exactly 0 on both sides counts, wherever it falls (a learning rate still 0 in warm-up,
    a log without a step key). Counted steps place no record before an update, so only that
    last kind applies to them.
    """
    records = []
    train = data.split_steps("train")
    if data.run.step_source != "counted":
        evals = data.split_steps("eval").filter(pl.col("step") == 0)
        if evals.height and "loss" in evals.columns and evals.get_column("loss").is_finite().any():
            records.append(evals.head(1))
        config = data.run.meta.trainer_config
        windowed = (config.get("logging_steps") or 1) > 1 and not config.get("logging_first_step")
        if train.height >= 2 and "loss" in train.columns and not windowed:
            first, second = int(train["step"][0]), int(train["step"][1])
            dialect = data.dialect
            single = dialect is not None and dialect.reduction in ("single-step", "last-micro-batch")
            # HF Trainer logs at step 1 only for a window of that one step: logging_steps 1, or
            # logging_first_step (records at steps 1, k, 2k, ...).
            hf_trainer = dialect is not None and dialect.framework in HF_TRAINER_FRAMEWORKS
            if first <= 1 and (second == first + 1 or single or hf_trainer):
                records.append(train.head(1))
    if not any(record["split"][0] == "train" for record in records):
        zero = _zero_reward_record(train)
        if zero is not None:
            records.append(zero)
    return records


def _zero_reward_record(train: pl.DataFrame) -> pl.DataFrame | None:
    """Return the first train record with a finite loss and both rewards exactly 0, else None."""
    if not {"loss", "rewards_chosen", "rewards_rejected"} <= set(train.columns):
        return None
    zero = train.filter(pl.col("loss").is_finite() & (pl.col("rewards_chosen") == 0)
                        & (pl.col("rewards_rejected") == 0))
    return zero.head(1) if zero.height else None


def zero_margin_value(data: RunData) -> tuple[float, str, str] | None:
    """Return the loss at zero margin for the run's loss type, the loss type and its source."""
    loss_type, source = data.loss_type_for_checks(allow_default=False)
    spec = LOSSES.get(loss_type or "")
    if spec is None or spec.zero_margin is None:
        return None
    beta = data.run.meta.beta
    if beta is None and loss_type in ("ipo", "sppo_hard"):
        return None
    return spec.zero_margin(beta or 0.1, data.run.meta.label_smoothing), loss_type, source


def first_record_check(data: RunData) -> tuple[dict, bool] | None:
    """Compare the records before any update with the zero-margin loss.

    Returns the evidence of the first record that disagrees and whether its rewards are ~0
    (policy equals reference), or None when every such record agrees.
    """
    require_reference_loss(data)
    config = data.run.meta.trainer_config
    for setting in ("use_weighting", "ld_alpha", "rpo_alpha"):
        if config.get(setting):
            raise Skip(f"{setting} changes the loss before any update")
    expected = zero_margin_value(data)
    if expected is None:
        raise Skip("the loss type is not declared, has no zero-margin value, or needs beta")
    records = records_before_update(data)
    if not records and data.run.step_source == "counted":
        raise Skip("the log has no step key, so no record can be placed before the first update, "
                   "and no train record has rewards of exactly 0")
    if not records:
        raise Skip("no record was computed before the first update (log at step 1, or evaluate at step 0)")
    for record in records:
        result = _compare_first_record(data, record, *expected)
        if result is not None:
            return result
    return None


def _agrees(loss: float, value: float) -> bool:
    # 1% covers bf16 (ln 2 logs as 0.6914-0.6934) and 4-decimal rounding.
    return abs(loss - value) <= max(0.01 * abs(value), 1e-3)


def _compare_first_record(data: RunData, record: pl.DataFrame, value: float, loss_type: str,
                          source: str) -> tuple[dict, bool] | None:
    if record["loss"][0] is None:
        return None
    loss = float(record["loss"][0])
    if not math.isfinite(loss) or _agrees(loss, value):
        return None
    rewards = [float(record[c][0]) for c in ("rewards_chosen", "rewards_rejected")
               if c in record.columns and record[c][0] is not None and math.isfinite(record[c][0])]
    evidence = {"first_loss": loss, "zero_margin_loss": value, "loss_type": loss_type,
                "loss_type_source": source, "split": record["split"][0], "step": int(record["step"][0]),
                "ratio": loss / value if value else None}
    if rewards:
        evidence["first_rewards"] = rewards
    # Rewards within numerics of 0 mean policy and reference agree: a wrong loss is then the
    # loss's own fault (scale, variant), not the reference's.
    near_zero = bool(rewards) and _ratios_within_numerics(data, record, rewards)
    at_margin = loss_at_rewards(data, loss_type, rewards) if len(rewards) == 2 and any(rewards) else None
    tolerance = numerics_tolerance(record)
    if rewards and tolerance is not None:
        # The smallest beta at which these rewards would be log-ratios within numerics.
        evidence["beta_within_numerics"] = max(abs(r) for r in rewards) / tolerance
    if at_margin is not None:
        # The record's pairs were scored with small non-zero margins (dropout, a learning rate
        # that is no longer 0): the loss is compared with the loss at those margins.
        evidence.update(loss_at_logged_margin=at_margin, ratio=loss / at_margin if at_margin else None,
                        explained_by_margin=_agrees(loss, at_margin))
    return evidence, near_zero


def loss_at_rewards(data: RunData, loss_type: str, rewards: list[float], beta: float | None = None) -> float | None:
    """Return the per-pair loss `loss_type` at a record's mean log-ratios, rewards / beta.

    None when the rewards are not beta times log-ratios. The mean of a convex loss is at least
    this value, by a gap that is second order in the spread of the margins.
    """
    spec = LOSSES.get(loss_type)
    dialect = data.dialect
    if spec is None or (dialect is not None and not dialect.rewards_beta_scaled):
        return None
    beta = beta or data.run.meta.beta or 0.1
    chosen, rejected = (torch.tensor([reward / beta], dtype=torch.float64) for reward in rewards)
    value = spec.fn(PairBatch(chosen, rejected), beta, label_smoothing=data.run.meta.label_smoothing)
    return float(value[0])


def _ratios_within_numerics(data: RunData, record: pl.DataFrame, rewards: list[float]) -> bool:
    """True when rewards/beta, the mean log-ratios, are within 1% of the log-probs (bf16 noise),
    the tolerance the pair-level step-0 check uses."""
    beta = data.run.meta.beta or 0.1
    if data.dialect is not None and not data.dialect.rewards_beta_scaled:
        beta = 1.0
    tolerance = numerics_tolerance(record)
    return tolerance is not None and max(abs(r) / beta for r in rewards) <= tolerance


def numerics_tolerance(record: pl.DataFrame) -> float | None:
    """Return the largest mean log-ratio (nats) that numerics explain before any update: 1% of
    the smaller |logps|, at least 0.05. None when the record logs no log-probs."""
    logps = [abs(float(record[c][0])) for c in ("logps_chosen", "logps_rejected")
             if c in record.columns and record[c][0] is not None and math.isfinite(record[c][0])]
    return max(0.05, 0.01 * min(logps)) if logps else None


def other_zero_margin_match(data: RunData, evidence: dict) -> tuple[str, float] | None:
    """Return the other loss variant whose value is closest to the first loss, within 1%.

    Each variant is evaluated at the run's beta, at the record's logged margins, else at
    margin 0. None when no variant is that close, or when an integer scale of the declared
    loss is closer.
    """
    beta = data.run.meta.beta or 0.1
    loss = evidence["first_loss"]
    best = None
    for name, spec in LOSSES.items():
        if name == evidence["loss_type"] or spec.zero_margin is None:
            continue
        value = None
        if "loss_at_logged_margin" in evidence:
            value = loss_at_rewards(data, name, evidence["first_rewards"], beta)
        if value is None:
            value = spec.zero_margin(beta, data.run.meta.label_smoothing)
        error = abs(loss - value) / abs(value) if value else math.inf
        if error <= 0.01 and (best is None or error < best[2]):
            best = (name, value, error)
    if best is None or scale_error(evidence["ratio"]) < best[2]:
        return None
    return best[0], best[1]


def loss_type_at_first_record(data: RunData) -> list[Finding]:
    """Step logs: before any update the loss is another variant's zero-margin value."""
    result = first_record_check(data)
    if result is None:
        return []
    evidence, rewards_zero = result
    if evidence.get("explained_by_margin"):
        return []
    match = other_zero_margin_match(data, evidence)
    if match is None or not (rewards_zero or "first_rewards" not in evidence):
        return []
    name, value = match
    if "loss_at_logged_margin" in evidence:
        value_kind, declared = "value at the logged margins", evidence["loss_at_logged_margin"]
    else:
        value_kind, declared = "zero-margin value", evidence["zero_margin_loss"]
    return [data.finding(
        "loss-type-mismatch", f"The first logged loss is {name}'s {value_kind}",
        f"Before any update the {evidence['split']} loss is {evidence['first_loss']:.4g}, which is "
        f"the {value_kind} of {name} ({value:.4g}), not of the recorded "
        f"{evidence['loss_type']} ({declared:.4g}). The trainer computed "
        f"{name}.", split=evidence["split"], step=evidence["step"],
        evidence={**evidence, "matching_loss_type": name, "matching_value": value})]


def scale_error(ratio: float | None) -> float:
    """Relative distance of `ratio` from k or 1/k with an integer k >= 2; inf for other ratios."""
    if not ratio or ratio <= 0:
        return math.inf
    k = ratio if ratio > 1 else 1 / ratio
    return abs(k - round(k)) / k if round(k) >= 2 else math.inf


def scale_factor_like(ratio: float | None) -> bool:
    """True for k or 1/k with an integer k >= 2: the factors that gradient accumulation and
    sum-versus-mean reductions produce. Within 2%, and within 0.25 of k, so that a large ratio
    is not an integer by tolerance alone (every number is within 2% of an integer above 25)."""
    if not ratio or ratio <= 0:
        return False
    k = ratio if ratio > 1 else 1 / ratio
    return scale_error(ratio) <= 0.02 and abs(k - round(k)) <= 0.25


def scale_at_first_record(data: RunData) -> list[Finding]:
    """Step logs: rewards 0 before any update, yet the loss is k x its zero-margin value."""
    result = first_record_check(data)
    if result is None:
        return []
    evidence, rewards_zero = result
    if evidence.get("explained_by_margin"):
        return []
    if other_zero_margin_match(data, evidence) is not None:
        return []  # another loss variant explains the value: loss-type-mismatch reports it
    ratio = evidence["ratio"]
    if not ((rewards_zero or "first_rewards" not in evidence) and scale_factor_like(ratio)):
        return []
    expected = evidence.get("loss_at_logged_margin", evidence["zero_margin_loss"])
    where = " at the logged margins" if "loss_at_logged_margin" in evidence else ""
    return [data.finding(
        "loss-scale-mismatch", f"The first logged loss is {ratio:.3g} x its expected value",
        f"Before any update the {evidence['split']} loss is {evidence['first_loss']:.4g} while policy "
        f"and reference agree (rewards about 0), against {expected:.4g} for "
        f"{evidence['loss_type']}{where}: the logged loss is scaled by about {ratio:.3g}, as a "
        "gradient-accumulation division or a sum-versus-mean bug does.",
        split=evidence["split"], step=evidence["step"], evidence=evidence)]
