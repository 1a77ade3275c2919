"""Charts binned from the pair table: margin against length difference, and calibration."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from dpodiag.checks.base import RunData
from dpodiag.report.overlay import Chart, add_guide, splits_of, step_axis
from dpodiag.report.traces import layout, legend_entry, line, run_colour, run_entries, style_entries

LENGTH_BINS = 10
PROBABILITY_BINS = 10
# Share of the logged train steps that counts as the start and as the end of training.
PHASE_SHARE = 0.2


def phase_pairs(data: RunData, late: bool, columns: list[str]) -> pl.DataFrame:
    """`columns` of the train pairs (all pairs when there is no train split) from the first or
    last PHASE_SHARE of steps; only these rows and columns are read into memory."""
    pairs = data.scan_pairs()
    train = pairs.filter(pl.col("split") == "train")
    steps = data.collect(train.select(pl.col("step").unique().sort())).get_column("step")
    if steps.len() == 0:
        train = pairs
        steps = data.collect(train.select(pl.col("step").unique().sort())).get_column("step")
    count = max(1, int(round(steps.len() * PHASE_SHARE)))
    chosen = steps.tail(count) if late else steps.head(count)
    return data.collect(train.filter(pl.col("step").is_in(chosen.to_list())).select(columns))


def length_edges(differences: np.ndarray) -> np.ndarray:
    """Bin edges for length differences: one bin per value when there are few distinct values
    (short responses), else LENGTH_BINS quantile bins."""
    # Polars' hash-based unique, then a sort of the distinct values only: about 5 times faster
    # than np.unique's sort of every value on a million differences.
    values = np.sort(pl.Series(differences).unique().to_numpy())
    if len(values) <= 2 * LENGTH_BINS:
        # Edges halfway between neighbouring values put each value in a bin of its own.
        middles = (values[1:] + values[:-1]) / 2
        return np.concatenate([[values[0] - 0.5], middles, [values[-1] + 0.5]])
    return np.unique(np.quantile(differences, np.linspace(0, 1, LENGTH_BINS + 1)))


def binned_means(x: np.ndarray, y: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean x and mean y of the finite points in each bin of `edges`; empty bins are dropped."""
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    index = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(index, minlength=len(edges) - 1)
    filled = counts > 0
    mean_x = np.bincount(index, weights=x, minlength=len(edges) - 1)[filled] / counts[filled]
    mean_y = np.bincount(index, weights=y, minlength=len(edges) - 1)[filled] / counts[filled]
    return mean_x, mean_y


def correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of the finite points; NaN when either side is constant."""
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.std(x[keep]) == 0 or np.std(y[keep]) == 0:
        return float("nan")
    return float(np.corrcoef(x[keep], y[keep])[0, 1])


def length_chart(runs: list[RunData]) -> Chart:
    """Mean reward margin per bin of chosen-minus-rejected length, early and late in training."""
    chart = Chart("chart-length", "Reward margin against length difference",
                  "Train pairs binned by length difference (chosen − rejected tokens), mean margin per "
                  "bin: dotted for the first 20 % of steps, solid for the last 20 %; r is the "
                  "correlation of margin with length difference. Healthy: flat lines, r near 0. A "
                  "slope that steepens over training means the model learns to reward length itself.")
    traces: list[dict[str, Any]] = []
    for index, data in enumerate(runs):
        run_traces = length_traces(data, run_colour(index))
        if not run_traces:
            chart.absent_runs.append(data.name)
        traces.extend(run_traces)
    if not traces:
        chart.missing = "needs chosen_length/rejected_length columns in a pair log"
        return chart
    traces += [legend_entry("first 20 % of steps", group="style-early", dash="dot", width=1.5, markers=True),
               legend_entry("last 20 % of steps", group="style-late", width=2, markers=True)]
    figure_layout = layout(["margin"], y_titles=["mean reward margin"],
                           x_title="chosen − rejected length (tokens)")
    add_guide(figure_layout, 0.0, 0, "")
    chart.figure = {"data": traces, "layout": figure_layout}
    return chart


def length_traces(data: RunData, colour: str) -> list[dict[str, Any]]:
    """Build the early and late binned margin lines of one run, none without lengths."""
    if not {"chosen_length", "rejected_length", "margin"} <= set(data.pair_columns):
        return []
    difference = (pl.col("chosen_length") - pl.col("rejected_length")).alias("difference")
    phases = [phase_pairs(data, late, ["chosen_length", "rejected_length", "margin"])
              .select(difference, "margin") for late in (False, True)]
    everything = pl.concat(phases).get_column("difference").to_numpy().astype(np.float64)
    everything = everything[np.isfinite(everything)]
    if len(everything) == 0:
        return []

    # Bin edges shared by both phases of the run.
    edges = length_edges(everything)
    traces = []
    correlations = []
    for late, frame in zip((False, True), phases):
        x = frame.get_column("difference").to_numpy().astype(np.float64)
        y = frame.get_column("margin").to_numpy().astype(np.float64)
        mean_x, mean_y = binned_means(x, y, edges)
        correlations.append(correlation(x, y))
        trace = line(mean_x, mean_y, run=data.name, colour=colour, split="train",
                     label="last 20 % of steps" if late else "first 20 % of steps")
        trace.update(mode="lines+markers")
        trace["line"].update(dash="solid" if late else "dot", width=2 if late else 1.5)
        trace["hovertemplate"] = "length difference %{x:.4g}<br>mean margin %{y:.4g}"
        traces.append(trace)

    # The run's legend entry carries the correlation at the start and at the end.
    early, late = (f"{r:.2f}" if np.isfinite(r) else "n/a" for r in correlations)
    traces += run_entries([(f"{data.name} (r {early} → {late})", colour)])
    traces[-1]["legendgroup"] = data.name
    return traces


def calibration_chart(runs: list[RunData]) -> Chart:
    """Build a reliability diagram when preference strengths exist, else entropy against log-loss."""
    if any(has_preference_strength(data) for data in runs):
        return reliability_chart(runs)
    return entropy_chart(runs)


def reliability_chart(runs: list[RunData]) -> Chart:
    """Mean annotator preference strength per bin of the model's probability p (late train pairs)."""
    chart = Chart("chart-calibration", "Calibration: reliability diagram",
                  "Train pairs from the last 20 % of steps, binned by the model's probability p that "
                  "the chosen response is preferred; y is the mean annotator preference strength in "
                  "the bin. Healthy: points near the diagonal. Points below it mean the implicit "
                  "reward model is overconfident, above it underconfident.")
    traces = []
    edges = np.linspace(0, 1, PROBABILITY_BINS + 1)
    for index, data in enumerate(runs):
        # Late train pairs of each run with preference strengths, binned by p.
        if "preference_strength" not in data.pair_columns:
            chart.absent_runs.append(data.name)
            continue
        late = phase_pairs(data, True, ["probability", "preference_strength"])
        mean_p, mean_strength = binned_means(late.get_column("probability").to_numpy(),
                                             late.get_column("preference_strength").to_numpy(), edges)
        if len(mean_p) == 0:
            chart.absent_runs.append(data.name)
            continue
        trace = line(mean_p, mean_strength, run=data.name, colour=run_colour(index), split="train",
                     label="late pairs")
        trace.update(mode="lines+markers")
        trace["hovertemplate"] = "mean p %{x:.3f}<br>mean preference strength %{y:.3f}"
        traces += [trace, *run_entries([(data.name, run_colour(index))])]
    if not traces:
        chart.missing = "needs preference_strength and finite margins in the last train steps"
        return chart

    # Square axes on [0, 1] with the diagonal of perfect calibration.
    figure_layout = layout(["reliability"], y_titles=["mean preference strength"],
                           x_title="model probability p (bin mean)")
    figure_layout["xaxis"]["range"] = [0, 1]
    figure_layout["yaxis"]["range"] = [0, 1]
    figure_layout["shapes"].append({"type": "line", "xref": "x", "yref": "y", "x0": 0, "y0": 0,
                                    "x1": 1, "y1": 1, "line": {"color": "#777", "width": 1, "dash": "dot"}})
    chart.figure = {"data": traces, "layout": figure_layout}
    return chart


def entropy_chart(runs: list[RunData]) -> Chart:
    """Per step, mean log-loss −log p against the mean binary entropy H(p) of the model's own p."""
    chart = Chart("chart-calibration", "Calibration: log-loss against entropy",
                  "Thin line: mean log-loss −log p of the implicit reward model on the logged pairs. "
                  "Wide pale line: mean binary entropy H(p), the log-loss the model expects if its "
                  "own probabilities were right. Healthy: the two stay close. Log-loss above entropy "
                  "means overconfident (confidently wrong on many pairs), below it underconfident. "
                  "With a preference_strength column this chart becomes a reliability diagram.")
    traces: list[dict[str, Any]] = []
    splits: set[str] = set()
    scales, x_title = step_axis(runs)
    for index, data in enumerate(runs):
        frame = entropy_per_step(data)
        if frame is None:
            chart.absent_runs.append(data.name)
            continue
        for split in splits_of(data):
            part = frame.filter(pl.col("split") == split)
            if part.height == 0:
                continue
            splits.add(split)
            x = part.get_column("step").to_numpy()
            for column, expected in (("entropy", True), ("log_loss", False)):
                label = "entropy H(p)" if expected else "log-loss −log p"
                traces.append(line(x, part.get_column(column).to_numpy(), run=data.name,
                                   colour=run_colour(index), split=split, label=label, expected=expected,
                                   step_scale=scales.get(data.name)))
        traces += run_entries([(data.name, run_colour(index))])
    if not traces:
        chart.missing = "needs a pair log (per-pair margins)"
        return chart
    traces += style_entries(splits, measured="log-loss −log p", expected="entropy H(p)")
    figure_layout = layout(["calibration"], y_titles=["nats"], x_title=x_title)
    chart.figure = {"data": traces, "layout": figure_layout}
    return chart


def has_preference_strength(data: RunData) -> bool:
    """True when the run's pair table has a finite preference strength."""
    if "preference_strength" not in data.pair_columns:
        return False
    query = data.scan_pairs().select(pl.col("preference_strength").is_finite().any())
    return bool(data.collect(query).item())


def softplus(x: pl.Expr) -> pl.Expr:
    """log(1 + e^x), as max(x, 0) + log1p(e^-|x|) so that it stays finite for large |x|."""
    return pl.when(x > 0).then(x).otherwise(0.0) + (-x.abs()).exp().log1p()


def entropy_per_step(data: RunData) -> pl.DataFrame | None:
    """Mean −log p and mean H(p) per split and step, from the per-pair margins; None without pairs."""
    if "margin" not in data.pair_columns:
        return None
    # With p = σ(m): −log p = softplus(−m) and −log(1 − p) = softplus(m).
    # NaN margins give NaN here and are dropped below.
    margin, probability = pl.col("margin"), pl.col("probability")
    loss_if_chosen, loss_if_rejected = softplus(-margin), softplus(margin)
    entropy = probability * loss_if_chosen + (1.0 - probability) * loss_if_rejected
    frame = (data.scan_pairs()
             .select("split", "step", loss_if_chosen.alias("log_loss"), entropy.alias("entropy"))
             .filter(pl.col("log_loss").is_finite() & pl.col("entropy").is_finite()))
    means = data.collect(frame.group_by(["split", "step"])
                         .agg(pl.col("log_loss").mean(), pl.col("entropy").mean()).sort("step"))
    return means if means.height else None
