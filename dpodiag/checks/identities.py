"""Checks that only step logs need: the identities and bounds that logged aggregates obey, and
artefacts of how trainers reduce metrics (rank-local values, frozen evaluations, the first record)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from dpodiag.checks.base import Finding, RunData, Skip, check, require_steps

# Losses g(beta*h) with g convex and decreasing whose logged margin is the quantity inside g, so
# that mean loss >= g(mean margin) (Jensen) and every pair with margin <= 0 costs at least g(0).
BOUNDED_LOSSES = {"sigmoid", "cdpo", "robust", "hinge"}
# Those of them with g >= 0 everywhere, so that mean loss >= (1 - accuracy) g(0). Robust's g
# falls below 0 for large margins, without a lower bound.
NONNEGATIVE_LOSSES = {"sigmoid", "cdpo", "hinge"}
# Trainer settings that change the logged loss so that the bounds above no longer hold.
BOUND_BREAKING_SETTINGS = ("use_weighting", "f_divergence_type", "loss_weights")


def _bound_margin_loss(loss_type: str, label_smoothing: float) -> tuple:
    """g(margin) for the bounded losses, as a numpy function, and g(0)."""
    eps = label_smoothing
    softplus = lambda z: np.logaddexp(0.0, z)  # noqa: E731
    functions = {
        "sigmoid": lambda m: softplus(-m),
        "cdpo": lambda m: (1 - eps) * softplus(-m) + eps * softplus(m),
        "robust": lambda m: ((1 - eps) * softplus(-m) - eps * softplus(m)) / (1 - 2 * eps),
        "hinge": lambda m: np.maximum(0.0, 1 - m),
    }
    g = functions[loss_type]
    return g, float(g(0.0))


# A bug breaks an identity in most records; a few isolated records that miss a bound are noise of
# real logs (reductions over slightly different pair sets, bf16 rounding).
SYSTEMATIC_SHARE = 0.1


def _systematic(violations: int, records: int) -> bool:
    return violations > 0 and violations >= SYSTEMATIC_SHARE * records


def _identity_problems(rows: pl.DataFrame) -> dict[str, dict]:
    """Margins that are not chosen - rejected, and accuracies outside [0, 1]."""
    problems: dict[str, dict] = {}
    if {"rewards_margins", "rewards_chosen", "rewards_rejected"} <= set(rows.columns):
        finite = rows.filter(pl.col("rewards_margins").is_finite() & pl.col("rewards_chosen").is_finite()
                             & pl.col("rewards_rejected").is_finite())
        gap = (finite.get_column("rewards_margins")
               - (finite.get_column("rewards_chosen") - finite.get_column("rewards_rejected"))).abs()
        size = (finite.get_column("rewards_chosen").abs() + finite.get_column("rewards_rejected").abs()
                + finite.get_column("rewards_margins").abs())
        # Trainers often compute rewards in bf16 (8 significant bits): each logged value may be
        # off by 2**-8 of itself, so the three values may disagree by up to 2**-8 of their sum.
        bad = finite.filter(gap > 2.0 ** -7 * size + 1e-4)
        if _systematic(bad.height, finite.height):
            problems["margins != chosen - rejected"] = {"records": bad.height, "first_step": int(bad["step"][0])}
    if "rewards_accuracies" in rows.columns:
        accuracy = rows.get_column("rewards_accuracies")
        bad = rows.filter(accuracy.is_finite() & ((accuracy < -1e-6) | (accuracy > 1 + 1e-6)))
        if bad.height:
            problems["accuracy outside [0, 1]"] = {"records": bad.height, "first_step": int(bad["step"][0]),
                                                   "max": float(accuracy.max())}
    return problems


def _bound_problems(data: RunData, rows: pl.DataFrame) -> dict[str, dict]:
    """Logged losses below the Jensen bound g(mean margin) or the accuracy bound (1 - acc) g(0)."""
    loss_type, _ = data.loss_type_for_checks(allow_default=False)
    dialect = data.dialect
    config = data.run.meta.trainer_config
    if (loss_type not in BOUNDED_LOSSES or (dialect is not None and (
            not dialect.rewards_beta_scaled or not dialect.paired
            or dialect.reduction.startswith("rank-local")))
            or any(config.get(k) not in (None, False, "reverse_kl") for k in BOUND_BREAKING_SETTINGS)):
        return {}
    g, at_zero = _bound_margin_loss(loss_type, data.run.meta.label_smoothing)
    decimals = dialect.loss_decimals if dialect is not None and dialect.loss_decimals else 8
    problems: dict[str, dict] = {}
    finite = rows.filter(pl.col("loss").is_finite())
    for name, column, bound_of in [
            ("loss below the Jensen bound g(mean margin)", "rewards_margins", g),
            ("loss below the accuracy bound (1 - accuracy) g(0)", "rewards_accuracies",
             lambda a: (1 - a) * at_zero)]:
        if column not in finite.columns:
            continue
        if column == "rewards_accuracies" and loss_type not in NONNEGATIVE_LOSSES:
            continue
        part = finite.filter(pl.col(column).is_finite())
        if part.height == 0:
            continue
        bound = bound_of(part.get_column(column).to_numpy())
        loss = part.get_column("loss").to_numpy()
        tolerance = np.maximum(1e-3, 0.01 * np.abs(bound)) + 0.5 * 10.0 ** -decimals
        below = loss < bound - tolerance
        if _systematic(int(below.sum()), len(loss)):
            first = int(np.argmax(below))
            problems[name] = {"records": int(below.sum()), "first_step": int(part["step"][first]),
                              "loss": float(loss[first]), "bound": float(bound[first])}
    return problems


@check("metric-identity-violated", "error", ("steps",),
       meaning="Logged aggregates break an identity or bound that every correct log obeys.",
       causes="Rewards logged twice with beta, components overwritten in a multi-loss run, "
              "micro-batch metrics summed instead of averaged, a loss and margins averaged over "
              "different sets, a wrong beta or loss type.",
       fix="Check how the trainer reduces its metrics and which loss, beta and scale it logs.")
def metric_identity_violated(data: RunData) -> list[Finding]:
    if data.dialect is not None and not data.dialect.paired:
        raise Skip("margins and accuracies of unpaired objectives follow other identities")
    findings = []
    for split in data.run.splits:
        rows = data.split_steps(split)
        finite_rewards = [c for c in ("rewards_chosen", "rewards_rejected", "rewards_margins") if c in rows.columns]
        # Records with a non-finite reward are non-finite-values' to report.
        for column in finite_rewards:
            rows = rows.filter(pl.col(column).is_finite())
        problems = _identity_problems(rows)
        if "loss" in rows.columns:
            problems.update(_bound_problems(data, rows))
        if not problems:
            continue
        first = min(p["first_step"] for p in problems.values())
        listed = "; ".join(f"{name} in {p['records']} record(s)" for name, p in problems.items())
        findings.append(data.finding(
            "metric-identity-violated", f"Logged {split} metrics contradict each other",
            f"{listed}, first at step {first}. These hold for any correct log of this loss, so the "
            "metrics, the loss type, beta or the reduction are not what the log claims.",
            split=split, step=first, evidence=problems))
    return findings


def configured_pairs_per_record(config: dict) -> tuple[int | None, str]:
    """Return the pairs that one logged train record averages on one device, and the settings it
    comes from: per-device batch x gradient_accumulation_steps x logging_steps.

    Trainers of the TRL family store the metrics of every micro-batch and log their mean over
    the steps since the last log. The per-device batch is per_device_train_batch_size, else
    trainer_state.json's train_batch_size; gradient_accumulation_steps is 1 when not recorded.
    None without a batch size or an integer logging_steps (a float is a share of the run).
    """
    batch_name = next((name for name in ("per_device_train_batch_size", "train_batch_size")
                       if _positive_int(config.get(name))), None)
    if batch_name is None or not _positive_int(config.get("logging_steps")):
        return None, ""
    settings = {batch_name: config[batch_name], "logging_steps": config["logging_steps"]}
    if _positive_int(config.get("gradient_accumulation_steps")):
        settings["gradient_accumulation_steps"] = config["gradient_accumulation_steps"]
    return math.prod(settings.values()), " x ".join(f"{name} {value}" for name, value in settings.items())


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# Share of accuracies on a 1/k grid that reveals the grid. A few records that average several
# logging windows (an epoch end, a resumed step) fall between its points.
GRID_SHARE = 0.95


def _share_on_grid(values: np.ndarray, k: int) -> float:
    return float(np.mean(np.abs(values * k - np.round(values * k)) < 1e-6))


@check("rank-local-metrics", "warning", ("steps",),
       meaning="Accuracies sit on a coarse 1/k grid: each logged value averages only k pairs.",
       causes="Metrics from one device that were never gathered (TRL up to 0.13), or per-device "
              "batches of 1-4 pairs logged every step.",
       fix="Compare runs only on gathered metrics or longer windows: raise logging_steps, or "
           "upgrade TRL when its version (up to 0.13) does not gather metrics.")
def rank_local_metrics(data: RunData) -> list[Finding]:
    rows = require_steps(data, "train", ["rewards_accuracies"], 10)
    values = rows.get_column("rewards_accuracies").to_numpy()
    if len(np.unique(values)) < 2:
        raise Skip("the accuracy never changes")
    grid = next((k for k in range(1, 17) if _share_on_grid(values, k) >= GRID_SHARE), None)
    # A run that saturates jumps from 0 to 1 once; per-device values keep jumping around.
    changes = int(np.count_nonzero(np.diff(values)))
    if grid is None or grid > 4 or changes < max(3, 0.1 * len(values)):
        return []
    legacy = data.dialect is not None and data.dialect.reduction.startswith("rank-local")
    pairs, settings = configured_pairs_per_record(data.run.meta.trainer_config)
    if pairs is not None and pairs <= 4 and pairs % grid == 0 and not legacy:
        raise Skip(f"each logged accuracy averages {pairs} pair(s) on a device ({settings}), "
                   f"so a 1/{grid} grid is expected")
    cause = ("this TRL version logs metrics of one device without gathering them"
             if legacy else "each logged value comes from one device or a tiny batch")
    title = "Accuracies are only 0 or 1" if grid == 1 else f"Accuracies are multiples of 1/{grid}"
    shape = "0 or 1, the accuracy of one pair" if grid == 1 else f"multiples of 1/{grid}"
    on_grid = round(_share_on_grid(values, grid) * len(values))
    count = f"All {len(values)}" if on_grid == len(values) else f"{on_grid} of {len(values)}"
    return [data.finding(
        "rank-local-metrics", title,
        f"{count} train accuracies are {shape}: {cause}. Per-record values "
        "are too noisy to judge, and comparisons with gathered runs are not like for like.",
        split="train", evidence={"grid": grid, "records": len(values),
                                 "values": sorted(set(np.round(values, 4).tolist()))[:10]})]


EVAL_FROZEN_COLUMNS = ["loss", "rewards_chosen", "rewards_rejected", "rewards_margins",
                       "logps_chosen", "logps_rejected"]


@check("eval-metrics-frozen", "warning", ("steps",),
       meaning="Eval metrics are bit-identical across evaluations while training moves.",
       causes="Evaluation of a model other than the one being trained (PEFT adapters disabled or "
              "not loaded at eval time), a cached eval result.",
       fix="Check that evaluation runs the current adapter-enabled policy.")
def eval_metrics_frozen(data: RunData) -> list[Finding]:
    evals = data.split_steps("eval")
    columns = [c for c in EVAL_FROZEN_COLUMNS if c in evals.columns]
    if evals.height < 2 or len(columns) < 2:
        raise Skip("needs two evaluations with at least two metrics")
    train = data.split_steps("train")
    frozen_pairs = []
    for before, after in zip(evals.iter_rows(named=True), evals.slice(1).iter_rows(named=True)):
        same = all(before[c] == after[c] for c in columns if before[c] is not None
                   and not (isinstance(before[c], float) and math.isnan(before[c])))
        between = train.filter((pl.col("step") > before["step"]) & (pl.col("step") <= after["step"]))
        moved = "loss" in between.columns and between.get_column("loss").n_unique() > 1
        if same and moved:
            frozen_pairs.append((before["step"], after["step"]))
    if not frozen_pairs:
        return []
    return [data.finding(
        "eval-metrics-frozen", "Eval metrics do not change between evaluations",
        f"{len(frozen_pairs)} pair(s) of consecutive evaluations report bit-identical "
        f"{', '.join(columns)} (first at steps {frozen_pairs[0][0]} and {frozen_pairs[0][1]}) "
        "while the train loss moved: the evaluated model is not the one being trained.",
        split="eval", step=int(frozen_pairs[0][1]), evidence={"frozen": frozen_pairs[:10], "columns": columns})]
