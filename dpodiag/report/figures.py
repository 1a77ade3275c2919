"""The report's charts of per-step aggregates, as plotly figure dicts, all runs overlaid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpodiag.checks.base import RunData
from dpodiag.compute.losses import LOSSES
from dpodiag.report.traces import (axis_names, envelope, hline, layout, legend_entry, line, plotly_text,
                                   run_colour, run_entries, step_series, style_entries)


@dataclass
class Chart:
    """One chart of the report: a plotly figure, or the reason it cannot be drawn."""

    id: str
    """The HTML anchor of the chart's section, e.g. "chart-loss"."""
    title: str
    caption: str
    """What the chart shows and what a healthy run looks like."""
    figure: dict[str, Any] | None = None
    missing: str | None = None
    """Why no run has data for the chart; set when `figure` is None."""
    absent_runs: list[str] = field(default_factory=list)
    """Runs that have no data in this chart while others do."""


@dataclass(frozen=True)
class Series:
    """A step-table column drawn as a line: its label, and whether it is a reference to match."""

    column: str
    label: str = ""
    expected: bool = False


@dataclass(frozen=True)
class Panel:
    """One panel of an overlay chart: title, y-axis title, series and horizontal guide lines."""

    title: str
    y_title: str
    series: tuple[Series, ...]
    guides: tuple[tuple[float, str], ...] = ()


def splits_of(data: RunData) -> list[str]:
    """Return the run's splits, train first, then eval, then any other."""
    if "split" not in data.steps.columns:
        return ["train"]
    present = set(data.steps.get_column("split").unique().drop_nulls().to_list())
    return [s for s in ("train", "eval") if s in present] + sorted(present - {"train", "eval"})


def overlay(chart: Chart, runs: list[RunData], panels: list[Panel], *, missing: str,
            shared_y: bool = False) -> Chart:
    """Fill `chart` with one line per run, split and series in each panel."""
    traces: list[dict[str, Any]] = []
    drawn_runs: list[tuple[str, str]] = []
    drawn_splits: set[str] = set()
    drawn_expected: list[str] = []
    for index, data in enumerate(runs):
        count = len(traces)
        for split in splits_of(data):
            for panel_index, panel in enumerate(panels):
                for series in panel.series:
                    points = step_series(data.steps, split, series.column)
                    if points is None:
                        continue
                    traces.append(line(*points, run=data.name, colour=run_colour(index), split=split,
                                       label=series.label, panel=panel_index, expected=series.expected))
                    drawn_splits.add(split)
                    if series.expected and series.label not in drawn_expected:
                        drawn_expected.append(series.label)
        if len(traces) > count:
            drawn_runs.append((data.name, run_colour(index)))
        else:
            chart.absent_runs.append(data.name)
    if not traces:
        chart.missing = missing
        return chart

    # Legend: the runs, then the line styles; the reference style only when one was drawn.
    measured = [s.label for p in panels for s in p.series if not s.expected and s.label]
    traces += run_entries(drawn_runs)
    traces += style_entries(drawn_splits, measured=measured[0] if drawn_expected and measured else "",
                            expected=drawn_expected[0] if drawn_expected else "")

    # Panels, then their guide lines.
    figure_layout = layout([p.title for p in panels], y_titles=[p.y_title for p in panels],
                           shared_y=shared_y)
    for panel_index, panel in enumerate(panels):
        for value, text in panel.guides:
            add_guide(figure_layout, value, panel_index, text)
    chart.figure = {"data": traces, "layout": figure_layout}
    return chart


def add_guide(figure_layout: dict[str, Any], value: float, panel: int, text: str) -> None:
    """Add a dotted horizontal guide line at `value` to one panel of `figure_layout`."""
    shape, label = hline(value, panel, plotly_text(text))
    figure_layout["shapes"].append(shape)
    if label is not None:
        figure_layout["annotations"].append(label)


def zero_margin_guides(runs: list[RunData]) -> tuple[tuple[float, str], ...]:
    """The loss value at zero margin for each distinct declared loss type and beta."""
    guides: dict[float, str] = {}
    for data in runs:
        spec = LOSSES.get(data.run.meta.loss_type or "")
        beta = data.run.meta.beta
        if spec is None or spec.zero_margin is None or beta is None:
            continue
        value = float(spec.zero_margin(beta, data.run.meta.label_smoothing))
        guides.setdefault(round(value, 6), f"zero-margin loss, {spec.name}: {value:.4g}")
    return tuple(guides.items())


def loss_chart(runs: list[RunData]) -> Chart:
    """Logged loss against the loss recomputed from the log-probs."""
    chart = Chart("chart-loss", "Logged and recomputed loss",
                  "Thin line: the loss the trainer logged. Wide pale line: the loss recomputed from "
                  "the log-probs with the declared beta and loss type. Healthy: the first step sits on "
                  "the dotted zero-margin line (ln 2 = 0.693 for sigmoid DPO), the loss falls, and the "
                  "thin line runs inside the pale one. A constant offset or ratio between them points "
                  "to another beta, loss variant or reduction.")
    panel = Panel("loss", "loss (nats)", (Series("loss_recomputed", "recomputed", expected=True),
                                          Series("loss", "logged")), zero_margin_guides(runs))
    return overlay(chart, runs, [panel], missing="needs a logged loss column, or a pair log with a "
                                                 "known beta and loss type to recompute it")


def rewards_chart(runs: list[RunData]) -> Chart:
    """Implicit rewards of chosen and rejected responses and their margin."""
    chart = Chart("chart-rewards", "Implicit rewards: chosen, rejected and margin",
                  "Rewards are beta × log-ratio of policy to reference, averaged per step. Healthy: "
                  "all three start at 0; chosen ends above rejected and the margin grows, then levels "
                  "off. Both rewards often fall, rejected faster. A margin of exactly 0 after the "
                  "first update means the reference follows the policy.")
    panels = [Panel("chosen", "reward", (Series("rewards_chosen"),), ((0.0, ""),)),
              Panel("rejected", "reward", (Series("rewards_rejected"),), ((0.0, ""),)),
              Panel("margin", "margin", (Series("rewards_margins"),), ((0.0, ""),))]
    return overlay(chart, runs, panels, missing="needs rewards_chosen/rewards_rejected/rewards_margins "
                                                "in the step log, or a pair log with a known beta")


def accuracy_chart(runs: list[RunData]) -> Chart:
    """Reward accuracy (margin > 0) and ranking accuracy (policy prefers chosen)."""
    chart = Chart("chart-accuracy", "Reward accuracy and ranking accuracy",
                  "Reward accuracy: share of pairs with margin > 0. Ranking accuracy: share of pairs "
                  "where the policy itself gives the chosen response the higher log-prob. Healthy: "
                  "reward accuracy climbs from about 0.5 well above chance; ranking accuracy is "
                  "usually much lower and moves slowly. Reward accuracy below 0.5 and falling means "
                  "the preference direction is inverted.")
    panels = [Panel("reward accuracy", "share of pairs", (Series("rewards_accuracies"),), ((0.5, "chance"),)),
              Panel("ranking accuracy", "share of pairs", (Series("ranking_accuracy"),), ((0.5, "chance"),))]
    return overlay(chart, runs, panels, missing="needs rewards_accuracies in the step log, or a pair log",
                   shared_y=True)


def weights_chart(runs: list[RunData]) -> Chart:
    """Mean DPO gradient weight and the effective-sample-size fraction."""
    chart = Chart("chart-weights", "Gradient weights and effective sample size",
                  "A pair's DPO gradient weight is σ(−margin): 0.5 at the start, near 0 once the pair "
                  "is separated. ESS fraction = (Σw)² / (n·Σw²), 1 when all pairs weigh the same. "
                  "Healthy: the mean weight falls gradually from 0.5 and the ESS fraction stays well "
                  "above 0. A mean weight near 0 early means the margins saturated; a low ESS "
                  "fraction means a few pairs drive the gradient.")
    panels = [Panel("mean gradient weight σ(−m)", "weight", (Series("grad_weight_mean"),), ((0.5, "start"),)),
              Panel("ESS fraction", "ESS / pairs", (Series("ess_fraction"),), ((1.0, ""),))]
    return overlay(chart, runs, panels, missing="needs a pair log (per-pair margins)")


def drift_chart(runs: list[RunData]) -> Chart:
    """Mean log-ratios of chosen and rejected responses: how far the policy moved from the reference."""
    chart = Chart("chart-drift", "Likelihood drift: policy against reference",
                  "Mean log π(y|x) − log π_ref(y|x) over pairs, in nats, for chosen and rejected "
                  "responses. Healthy: both start at 0 and rejected falls faster than chosen. Chosen "
                  "falling while the margin grows is likelihood displacement, common in DPO and worth "
                  "watching when large. Exactly 0 throughout means the reference is the policy.")
    panels = [Panel("chosen log-ratio", "nats", (Series("logratio_chosen"),), ((0.0, ""),)),
              Panel("rejected log-ratio", "nats", (Series("logratio_rejected"),), ((0.0, ""),))]
    return overlay(chart, runs, panels, missing="needs a pair log with policy and reference log-probs",
                   shared_y=True)


def logps_chart(runs: list[RunData]) -> Chart:
    """Mean policy sequence log-probs of chosen and rejected responses."""
    chart = Chart("chart-logps", "Policy sequence log-probs",
                  "Mean log π(y|x) of chosen and rejected responses, summed over response tokens "
                  "unless the run logs per-token averages. Healthy: negative and smooth. A value at "
                  "or above 0 is impossible for a non-empty response (an empty mask, or logits "
                  "logged in place of log-probs).")
    panels = [Panel("chosen", "log-prob (nats)", (Series("logps_chosen"),)),
              Panel("rejected", "log-prob (nats)", (Series("logps_rejected"),))]
    return overlay(chart, runs, panels, missing="needs logps_chosen/logps_rejected in the step log, "
                                                "or policy log-probs in a pair log", shared_y=True)


def probability_chart(runs: list[RunData]) -> Chart:
    """Quantile bands of the Bradley–Terry probability per step (train) and eval medians."""
    chart = Chart("chart-probability", "Bradley–Terry preference probability p = σ(margin)",
                  "Per step, the spread of p over the train pairs: outer band 5–95 %, inner band "
                  "25–75 %, solid line the median; dashed lines are eval medians. Healthy: the bands "
                  "start at 0.5 and move up together. Bands stuck at 0.5 mean no learning signal; a "
                  "lower band that sinks towards 0 means many pairs end up ranked the wrong way "
                  "round with confidence.")
    traces: list[dict[str, Any]] = []
    drawn_runs: list[tuple[str, str]] = []
    for index, data in enumerate(runs):
        run_traces = probability_traces(data, run_colour(index))
        if run_traces:
            drawn_runs.append((data.name, run_colour(index)))
        else:
            chart.absent_runs.append(data.name)
        traces.extend(run_traces)
    if not traces:
        chart.missing = "needs a pair log (per-pair margins); step logs carry no distribution"
        return chart
    traces += run_entries(drawn_runs)
    traces += [legend_entry("train median", group="style-train", width=2),
               legend_entry("eval median", group="style-eval", width=2, dash="dash", markers=True),
               legend_entry("train 5–95 % and 25–75 % bands", group="style-band", width=10, opacity=0.25)]
    figure_layout = layout(["p"], y_titles=["p(chosen preferred)"])
    figure_layout["yaxis"]["range"] = [0, 1]
    add_guide(figure_layout, 0.5, 0, "")
    chart.figure = {"data": traces, "layout": figure_layout}
    return chart


def probability_traces(data: RunData, colour: str) -> list[dict[str, Any]]:
    """The band and median traces of one run; empty when the run has no quantiles."""
    names = [f"probability_q{q:02d}" for q in (5, 25, 50, 75, 95)]
    columns = {}
    for name in names:
        points = step_series(data.steps, "train", name)
        if points is None:
            return eval_median(data, colour, [])
        x, columns[name] = points
    x, columns = envelope(x, columns, upper={"probability_q75", "probability_q95"})
    traces = []

    # Each band is an invisible upper edge followed by a lower edge filled up to it.
    for (low, high), alpha in ((("probability_q05", "probability_q95"), 0.12),
                               (("probability_q25", "probability_q75"), 0.28)):
        traces.append(_band_edge(x, columns[high], data.name, colour, fill=None))
        traces.append(_band_edge(x, columns[low], data.name, colour, fill=_rgba(colour, alpha)))
    traces.append(line(x, columns["probability_q50"], run=data.name, colour=colour, split="train",
                       label="median"))
    return eval_median(data, colour, traces)


def eval_median(data: RunData, colour: str, traces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append the eval median line of one run to `traces`, when the run has one."""
    points = step_series(data.steps, "eval", "probability_q50")
    if points is not None:
        traces.append(line(*points, run=data.name, colour=colour, split="eval", label="median"))
    return traces


def _band_edge(x: np.ndarray, y: np.ndarray, run: str, colour: str, fill: str | None) -> dict[str, Any]:
    xaxis, yaxis = axis_names(0)
    trace = {"type": "scatter", "mode": "lines", "x": x, "y": y, "legendgroup": run,
             "showlegend": False, "hoverinfo": "skip", "line": {"width": 0, "color": colour},
             "xaxis": xaxis, "yaxis": yaxis}
    if fill is not None:
        trace.update(fill="tonexty", fillcolor=fill)
    return trace


def _rgba(colour: str, alpha: float) -> str:
    red, green, blue = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red},{green},{blue},{alpha})"
