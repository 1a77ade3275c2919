"""The report's charts of per-step aggregates, as plotly figure dicts, all runs overlaid."""

from __future__ import annotations

from typing import Any

import numpy as np

from dpodiag.checks.base import RunData
from dpodiag.compute.losses import LOSSES
from dpodiag.report.overlay import Chart, Panel, Series, add_guide, overlay, step_axis
from dpodiag.report.traces import (axis_names, envelope, layout, legend_entry, line, run_colour, run_entries,
                                   step_series)


def zero_margin_guides(runs: list[RunData]) -> tuple[tuple[float, str], ...]:
    """Return a guide at the zero-margin loss for each distinct declared loss type and beta."""
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
                  "reward accuracy climbs from about 0.5 well above chance. Ranking accuracy starts "
                  "from the reference model's own ranking, in which summed log-probs favour the "
                  "shorter response, and need not follow. Reward accuracy below 0.5 and falling means "
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
    scales, x_title = step_axis(runs)
    for index, data in enumerate(runs):
        run_traces = probability_traces(data, run_colour(index), scales.get(data.name))
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
    figure_layout = layout(["p"], y_titles=["p(chosen preferred)"], x_title=x_title)
    figure_layout["yaxis"]["range"] = [0, 1]
    add_guide(figure_layout, 0.5, 0, "")
    chart.figure = {"data": traces, "layout": figure_layout}
    return chart


def probability_traces(data: RunData, colour: str, scale: float | None) -> list[dict[str, Any]]:
    """Build the band and median traces of one run, none when the run has no quantiles.

    `scale` divides the steps, as in `line`.
    """
    names = [f"probability_q{q:02d}" for q in (5, 25, 50, 75, 95)]
    columns = {}
    for name in names:
        points = step_series(data.steps, "train", name)
        if points is None:
            return eval_median(data, colour, [], scale)
        x, columns[name] = points
    x, columns = envelope(x, columns, upper={"probability_q75", "probability_q95"})
    traces = []

    # Each band is an invisible upper edge followed by a lower edge filled up to it.
    band_x = x / scale if scale else x
    for (low, high), alpha in ((("probability_q05", "probability_q95"), 0.12),
                               (("probability_q25", "probability_q75"), 0.28)):
        traces.append(_band_edge(band_x, columns[high], data.name, colour, fill=None))
        traces.append(_band_edge(band_x, columns[low], data.name, colour, fill=_rgba(colour, alpha)))
    traces.append(line(x, columns["probability_q50"], run=data.name, colour=colour, split="train",
                       label="median", step_scale=scale))
    return eval_median(data, colour, traces, scale)


def eval_median(data: RunData, colour: str, traces: list[dict[str, Any]],
                scale: float | None) -> list[dict[str, Any]]:
    """Append the eval median line of one run to `traces`, when the run has one."""
    points = step_series(data.steps, "eval", "probability_q50")
    if points is not None:
        traces.append(line(*points, run=data.name, colour=colour, split="eval", label="median",
                           step_scale=scale))
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
