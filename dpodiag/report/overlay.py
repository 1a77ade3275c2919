"""The chart model and the overlay of step-table series: all runs in one figure, one colour each."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dpodiag.checks.base import RunData
from dpodiag.report.traces import (axis_names, hline, layout, layout_key, line, plotly_text,
                                   run_colour, run_entries, step_series, style_entries)

# Runs whose last logged steps differ by more than this factor are drawn against training progress.
PROGRESS_RATIO = 3.0
# A positive panel whose runs' medians differ by more than this factor is drawn on a log axis.
SCALE_SPREAD = 10.0
# A log axis spans at most this ratio of largest to smallest value: values near 0 (margins at
# the first step) would stretch it over tens of decades and squash the runs at its top.
MAX_LOG_RANGE = 1e6
# Short enough for a three-panel row; the page explains it above the charts.
PROGRESS_TITLE = "progress (step / last step)"


@dataclass
class Chart:
    """One chart of the report: a plotly figure, or the reason it cannot be drawn."""

    id: str
    """The HTML anchor of the chart's section, e.g. "chart-loss"."""
    title: str
    caption: str
    """A description of the chart and of how a healthy run looks in it."""
    figure: dict[str, Any] | None = None
    missing: str | None = None
    """The reason no run has data for the chart, set when `figure` is None."""
    absent_runs: list[str] = field(default_factory=list)
    """Runs that have no data in this chart while others do."""
    notes: list[str] = field(default_factory=list)
    """Remarks on how the chart is drawn, such as a log axis, shown under its caption."""


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


def progress_scales(runs: list[RunData]) -> dict[str, float] | None:
    """Return each run's last logged step when the runs' lengths differ by more than
    PROGRESS_RATIO times (their step charts then share no useful step axis), else None."""
    last = {data.name: max(float(data.steps.get_column("step").max()), 1.0) for data in runs
            if "step" in data.steps.columns and data.steps.height}
    if len(last) < 2 or max(last.values()) <= PROGRESS_RATIO * min(last.values()):
        return None
    return last


def step_axis(runs: list[RunData]) -> tuple[dict[str, float], str]:
    """Return the x scale per run (empty for plain steps) and the x-axis title of step charts."""
    scales = progress_scales(runs)
    return (scales, PROGRESS_TITLE) if scales else ({}, "step")


def overlay(chart: Chart, runs: list[RunData], panels: list[Panel], *, missing: str,
            shared_y: bool = False) -> Chart:
    """Fill `chart` with one line per run, split and series in each panel."""
    traces: list[dict[str, Any]] = []
    drawn_runs: list[tuple[str, str]] = []
    drawn_splits: set[str] = set()
    drawn_expected: list[str] = []
    drawn_panels: set[int] = set()
    scales, x_title = step_axis(runs)
    for index, data in enumerate(runs):
        count = len(traces)
        for split in splits_of(data):
            for panel_index, panel in enumerate(panels):
                for series in panel.series:
                    points = step_series(data.steps, split, series.column)
                    if points is None:
                        continue
                    traces.append(line(*points, run=data.name, colour=run_colour(index), split=split,
                                       label=series.label, panel=panel_index, expected=series.expected,
                                       step_scale=scales.get(data.name)))
                    drawn_splits.add(split)
                    drawn_panels.add(panel_index)
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
                           x_title=x_title, shared_y=shared_y)
    for panel_index, panel in enumerate(panels):
        logarithmic = panel_index in drawn_panels and log_scale_needed(traces, panel_index)
        for value, text in panel.guides:
            if value > 0 or not logarithmic:  # a log axis has no place for 0 or below
                add_guide(figure_layout, value, panel_index, text)
        if panel_index not in drawn_panels:
            add_empty_note(figure_layout, panel_index, panel)
        elif logarithmic:
            _, yaxis = axis_names(panel_index)
            figure_layout[layout_key(yaxis)]["type"] = "log"
            chart.notes.append(f"The y-axis of the {panel.title} panel is logarithmic, because the "
                               f"runs' values differ by more than {SCALE_SPREAD:g} times.")
    chart.figure = {"data": traces, "layout": figure_layout}
    return chart


def log_scale_needed(traces: list[dict[str, Any]], panel_index: int) -> bool:
    """Tell whether a panel's runs are all positive and their medians span more than SCALE_SPREAD
    times, so that on a linear axis the smaller runs would lie flat along 0, while all values
    span at most MAX_LOG_RANGE."""
    _, yaxis = axis_names(panel_index)
    medians: dict[str, float] = {}
    lowest, highest = math.inf, 0.0
    for trace in traces:
        if trace.get("yaxis") != yaxis or trace.get("showlegend"):
            continue  # another panel, or a legend-only entry
        values = np.asarray([v for v in trace["y"] if v is not None], dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        if (values <= 0).any():
            return False
        run = trace["legendgroup"]
        medians[run] = max(medians.get(run, 0.0), float(np.median(values)))
        lowest, highest = min(lowest, float(values.min())), max(highest, float(values.max()))
    return (len(medians) > 1 and max(medians.values()) > SCALE_SPREAD * min(medians.values())
            and highest <= MAX_LOG_RANGE * lowest)


def add_empty_note(figure_layout: dict[str, Any], panel_index: int, panel: Panel) -> None:
    """Write "no data" in the middle of a panel that no run has data for."""
    xaxis, yaxis = axis_names(panel_index)
    columns = ", ".join(series.column for series in panel.series)
    figure_layout["annotations"].append({
        "xref": f"{xaxis} domain", "yref": f"{yaxis} domain", "x": 0.5, "y": 0.5, "showarrow": False,
        "text": f"no run logs {columns}", "font": {"size": 13, "color": "#777"}})


def add_guide(figure_layout: dict[str, Any], value: float, panel: int, text: str) -> None:
    """Add a dotted horizontal guide line at `value` to one panel of `figure_layout`."""
    shape, label = hline(value, panel, plotly_text(text))
    figure_layout["shapes"].append(shape)
    if label is not None:
        figure_layout["annotations"].append(label)
