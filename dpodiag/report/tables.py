"""The report's tables: runs, findings with evidence, run comparison, and the appendix."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import polars as pl

from dpodiag.checks.base import REGISTRY, SEVERITIES, Finding, RunData
from dpodiag.pipeline import run_summary
from dpodiag.report.traces import run_colour

# The chart that shows each check's evidence; findings of other codes get no chart link.
CHART_OF_CHECK = {
    "reference-tracks-policy": "chart-drift", "reference-missing": "chart-drift",
    "reference-not-initial-policy": "chart-loss", "reference-not-frozen": "chart-drift",
    "preference-direction-inverted": "chart-accuracy", "beta-mismatch": "chart-loss",
    "loss-type-mismatch": "chart-loss", "loss-scale-mismatch": "chart-loss",
    "loss-mismatch": "chart-loss", "non-finite-values": "chart-loss",
    "invalid-logprobs": "chart-logps", "metric-identity-violated": "chart-rewards",
    "no-learning-signal": "chart-rewards", "likelihood-displacement": "chart-drift",
    "margin-saturation": "chart-weights", "overfitting": "chart-loss",
    "length-exploitation": "chart-length", "mask-or-padding-suspect": "chart-length",
    "degenerate-pairs": "chart-probability", "rank-local-metrics": "chart-accuracy",
    "eval-metrics-frozen": "chart-loss", "duplicate-steps": "chart-loss",
    "instability": "chart-loss", "too-little-data": "chart-loss",
    "beta-inferred": "chart-loss", "loss-type-inferred": "chart-loss",
}
# Checks whose findings link to no chart: they state how the objective was read, which no
# chart of the page shows.
NO_CHART = {"normalisation-inferred", "reference-free-objective"}
# Share of the last logged train steps averaged for the comparison's "end of training" figures.
END_SHARE = 0.1
# Step-table columns compared across runs: (column, label).
END_OF_TRAINING = [
    ("loss", "loss (logged)"), ("loss_recomputed", "loss (recomputed)"),
    ("rewards_chosen", "reward chosen"), ("rewards_rejected", "reward rejected"),
    ("rewards_margins", "reward margin"), ("rewards_accuracies", "reward accuracy"),
    ("ranking_accuracy", "ranking accuracy"), ("probability_q50", "median p"),
    ("grad_weight_mean", "mean gradient weight"), ("ess_fraction", "ESS fraction"),
    ("logratio_chosen", "chosen log-ratio"), ("logratio_rejected", "rejected log-ratio"),
    ("grad_norm", "grad norm"),
]
LAST_EVAL = [("loss", "eval loss"), ("rewards_accuracies", "eval reward accuracy"),
             ("rewards_margins", "eval reward margin")]
MAX_LIST_ITEMS = 12
MAX_VALUE_CHARS = 400


def format_number(value: Any) -> str:
    """Format a number for a table cell: 4 significant digits, thousands separators for ints."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—" if value is None else str(value)
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_value(value: Any) -> str:
    """Format an evidence value: numbers, lists and nested dicts on one line, cut when long."""
    if isinstance(value, dict):
        text = ", ".join(f"{key}: {format_value(item)}" for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        shown = ", ".join(format_value(item) for item in value[:MAX_LIST_ITEMS])
        more = len(value) - MAX_LIST_ITEMS
        text = f"[{shown}{f', … {more} more' if more > 0 else ''}]"
    else:
        text = format_number(value)
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + " …"


def run_rows(runs: list[RunData]) -> list[dict[str, Any]]:
    """Build one header row per run: name, colour, source, level, beta and loss type with sources."""
    rows = []
    for index, data in enumerate(runs):
        summary = run_summary(data.run)
        first, last = summary["first_step"], summary["last_step"]
        rows.append({**summary, "colour": run_colour(index),
                     "beta_text": format_number(summary["beta"]),
                     "rows_text": format_number(summary["rows"]),
                     "steps_text": "—" if first is None else f"{first}–{last}",
                     "logged_steps": data.steps.height})
    return rows


@dataclass
class FindingView:
    """A finding as the page shows it."""

    finding: Finding
    colour: str
    evidence: list[tuple[str, str]]
    fix: str | None
    chart: str | None
    """The anchor of the chart that shows the finding, when that chart is drawn."""
    chart_title: str | None


def finding_views(findings: list[Finding], runs: list[RunData],
                  chart_titles: dict[str, str]) -> dict[str, list[FindingView]]:
    """Findings grouped by severity, in run order and then step order within each severity.

    `chart_titles` maps the anchors of the drawn charts to the titles that links show.
    """
    colours = {data.name: run_colour(index) for index, data in enumerate(runs)}
    order = {data.name: index for index, data in enumerate(runs)}
    grouped: dict[str, list[FindingView]] = {severity: [] for severity in SEVERITIES}
    ranked = sorted(findings, key=lambda f: (order.get(f.run, len(order)),
                                             f.step if f.step is not None else -1))
    for finding in ranked:
        spec = REGISTRY.get(finding.code)
        chart = CHART_OF_CHECK.get(finding.code)
        grouped.setdefault(finding.severity, []).append(FindingView(
            finding=finding, colour=colours.get(finding.run, "#777"),
            evidence=[(str(key), format_value(value)) for key, value in finding.evidence.items()],
            fix=spec.fix if spec is not None else None,
            chart=chart if chart in chart_titles else None, chart_title=chart_titles.get(chart)))
    return grouped


def end_of_training(steps: pl.DataFrame, column: str) -> float | None:
    """Mean of `column` over the last END_SHARE of logged train steps (at least one step)."""
    if column not in steps.columns:
        return None
    train = steps.filter(pl.col("split") == "train") if "split" in steps.columns else steps
    values = train.sort("step").get_column(column).cast(pl.Float64, strict=False)
    values = values.filter(values.is_finite())
    if values.len() == 0:
        return None
    count = max(1, int(round(values.len() * END_SHARE)))
    return float(values.tail(count).mean())


def last_eval(steps: pl.DataFrame, column: str) -> float | None:
    """Value of `column` at the last eval step with a finite value."""
    if column not in steps.columns or "split" not in steps.columns:
        return None
    values = (steps.filter(pl.col("split") == "eval").sort("step").get_column(column)
              .cast(pl.Float64, strict=False))
    values = values.filter(values.is_finite())
    return float(values[-1]) if values.len() else None


# How a logged value averages pairs, by dialect reduction. Values of different classes are not
# comparable: a mean over a logging window is far less noisy than one micro-batch.
REDUCTION_CLASS = {"window-mean": "all pairs",
                   "per-evaluation": "all pairs",
                   "rank-local-window-mean": "one device's pairs",
                   "last-micro-batch": "one micro-batch",
                   "single-step": "one step's pairs"}


def reduction_class(data: RunData) -> str:
    """Return what one logged value of the run averages: all pairs, one device or one micro-batch."""
    if data.pairs is not None:
        return "all pairs"
    dialect = data.dialect
    return REDUCTION_CLASS.get(dialect.reduction if dialect else "window-mean", "all pairs")


def comparison_rows(runs: list[RunData], findings: list[Finding]) -> list[dict[str, Any]]:
    """Build one row per compared figure: its label, and per run the value and the delta to run 1.

    A run whose logged values average pairs differently from run 1 gets no deltas on the metric
    rows, but a "not comparable" mark.
    """
    classes = [reduction_class(d) for d in runs]
    comparable = [cls == classes[0] for cls in classes]
    figures: list[tuple[str, list[float | int | None]]] = []
    train_steps = [d.steps.filter(pl.col("split") == "train").height if "split" in d.steps.columns
                   else d.steps.height for d in runs]
    figures.append(("logged train steps", train_steps))
    figures.append(("pair rows", [d.run.rows if d.pairs is not None else None for d in runs]))
    for column, label in END_OF_TRAINING:
        figures.append((label, [end_of_training(d.steps, column) for d in runs]))
    for column, label in LAST_EVAL:
        figures.append((label, [last_eval(d.steps, column) for d in runs]))
    for severity in ("error", "warning"):
        figures.append((f"{severity}s", [sum(1 for f in findings if f.run == d.name and f.severity == severity)
                                         for d in runs]))

    # Figures that no run has are left out; deltas need both values and the same reduction.
    metric_labels = {label for _, label in (*END_OF_TRAINING, *LAST_EVAL)}
    rows = [{"label": "a logged value averages", "cells": [{"value": cls, "delta": None} for cls in classes]}]
    for label, values in figures:
        if all(value is None for value in values):
            continue
        base = values[0]
        cells = []
        for index, value in enumerate(values):
            delta = None
            if index and value is not None and base is not None:
                delta = _signed(value - base)
                if label in metric_labels and not comparable[index]:
                    delta = "not comparable"
            cells.append({"value": format_number(value), "delta": delta})
        rows.append({"label": label, "cells": cells})
    return rows


def _signed(delta: float | int) -> str:
    if delta == 0:
        return "±0"
    if isinstance(delta, int):
        return f"{delta:+,d}"
    return f"{delta:+.3g}"


def appendix_rows(data: RunData, findings: list[Finding]) -> dict[str, Any]:
    """Collect what the reader did with one run: format, dialect, mapping, metadata, notes, skipped checks."""
    run = data.run
    meta = run.meta
    fields = [name for name in meta.__dataclass_fields__ if name != "sources"]
    metadata = [(name, format_value(getattr(meta, name)), meta.source_of(name) or "—") for name in fields
                if getattr(meta, name) not in (None, {}, [])]
    skipped: dict[str, str] = {}
    for finding in findings:
        if finding.run == run.name and finding.code == "checks-skipped":
            skipped.update(finding.evidence.get("skipped", {}))
    mapping = sorted(run.column_mapping.items())
    return {"name": run.name, "source": run.source, "format": run.format, "dialect": run.dialect or "—",
            "level": run.level, "same_name": [canonical for canonical, theirs in mapping if canonical == theirs],
            "renamed": [(canonical, theirs) for canonical, theirs in mapping if canonical != theirs],
            "metadata": metadata,
            "notes": list(run.notes), "skipped": sorted(skipped.items()),
            "step_columns": sorted(data.steps.columns)}
