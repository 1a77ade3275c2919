"""Plotly trace and layout dicts in the report's visual language, and series downsampling.

One colour per run (by run order, the same in every chart); train lines solid, eval lines dashed
with markers. A quantity measured by the trainer is a thin line. The value it should match
(recomputed loss, entropy) is a wide pale line underneath, so agreement shows as a thin line
inside a pale band. The legend has one entry per run, which hides or shows all of that run's
lines. Grey entries after them name the line styles, and data traces have no entry of their own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

# Okabe–Ito colours, distinguishable with the common colour-vision deficiencies, then Paul
# Tol's muted scheme for runs 8-15; colours repeat only from the 16th run.
RUN_COLOURS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
               "#882255", "#44AA99", "#999933", "#AA4499", "#117733", "#661100", "#6699CC", "#888888"]
# Points kept per series; charts are about 400-1100 px wide, so more would not show.
MAX_POINTS = 240
SPLIT_DASH = {"train": "solid", "eval": "dash"}
STYLE_GREY = "#666"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Liberation Sans', Arial, sans-serif"


def run_colour(index: int) -> str:
    """Return the colour of the run at position `index` in the report."""
    return RUN_COLOURS[index % len(RUN_COLOURS)]


def step_series(steps: pl.DataFrame, split: str, column: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Return (step, value) arrays of one split, sorted by step; None when nothing is finite."""
    if column not in steps.columns or "step" not in steps.columns:
        return None
    if "split" in steps.columns:
        steps = steps.filter(pl.col("split") == split)
    elif split != "train":
        return None
    frame = steps.select("step", pl.col(column).cast(pl.Float64, strict=False)).sort("step")
    x = frame.get_column("step").to_numpy()
    y = frame.get_column(column).fill_null(np.nan).to_numpy().astype(np.float64)
    if not np.isfinite(y).any():
        return None
    return x, y


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Keep at most `max_points` points: the ends and, per bucket, the minimum, the maximum and
    the first non-finite value (so spikes and NaN gaps survive)."""
    if len(x) <= max_points:
        return x, y
    keep = {0, len(x) - 1}
    edges = np.linspace(0, len(x), max_points // 3 + 1).astype(int)
    for start, stop in zip(edges[:-1], edges[1:]):
        segment = y[start:stop]
        finite = np.flatnonzero(np.isfinite(segment))
        # A bucket with any NaN or Inf keeps one, so that the line shows a gap there.
        if len(finite) < len(segment):
            keep.add(start + int(np.flatnonzero(~np.isfinite(segment))[0]))
        if len(finite):
            keep.add(start + int(finite[np.argmin(segment[finite])]))
            keep.add(start + int(finite[np.argmax(segment[finite])]))
    index = np.array(sorted(keep))
    return x[index], y[index]


def envelope(x: np.ndarray, columns: dict[str, np.ndarray], upper: set[str],
             max_points: int = MAX_POINTS) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Downsample the columns of a band to `max_points` buckets at the bucket's middle step.

    Columns named in `upper` keep the bucket maximum, columns ending in q50 the bucket median and
    the others the bucket minimum, so the band drawn is never narrower than the data.
    """
    if len(x) <= max_points:
        return x, columns
    edges = np.linspace(0, len(x), max_points + 1).astype(int)
    centres = np.array([x[(a + b - 1) // 2] for a, b in zip(edges[:-1], edges[1:])])
    reduced = {}
    for name, values in columns.items():
        if name in upper:
            reduce = np.nanmax
        elif name.endswith("q50"):
            reduce = np.nanmedian
        else:
            reduce = np.nanmin
        reduced[name] = np.array([reduce(values[a:b]) if np.isfinite(values[a:b]).any() else np.nan
                                  for a, b in zip(edges[:-1], edges[1:])])
    return centres, reduced


def axis_names(panel: int) -> tuple[str, str]:
    """Return the trace axis references ("x", "y"), ("x2", "y2"), ... of panel `panel` (0-based)."""
    suffix = "" if panel == 0 else str(panel + 1)
    return f"x{suffix}", f"y{suffix}"


def line(x: np.ndarray, y: np.ndarray, *, run: str, colour: str, split: str, label: str = "",
         panel: int = 0, expected: bool = False, step_scale: float | None = None) -> dict[str, Any]:
    """Build the line trace of one run and split; `expected` draws the wide pale reference style.

    With `step_scale`, x is drawn as x / step_scale (training progress) and hover shows x itself.
    """
    x, y = downsample(x, y)
    xaxis, yaxis = axis_names(panel)
    eval_markers = split == "eval" and not expected
    name = plotly_text(f"{run} · {split}" + (f" · {label}" if label else ""))
    trace = {
        "type": "scatter", "mode": "lines+markers" if eval_markers else "lines",
        "x": x, "y": y, "name": name, "legendgroup": run, "showlegend": False,
        "xaxis": xaxis, "yaxis": yaxis,
        "line": {"color": colour, "width": 7 if expected else 2,
                 "dash": SPLIT_DASH.get(split, "dot")},
        "marker": {"size": 5, "color": colour},
        "opacity": 0.3 if expected else 1.0,
        "hovertemplate": "step %{x}<br>%{y:.4g}",
    }
    if step_scale:
        trace.update(x=x / step_scale, customdata=x, hovertemplate="step %{customdata}<br>%{y:.4g}")
    return trace


def legend_entry(name: str, *, group: str, colour: str = STYLE_GREY, dash: str = "solid",
                 width: float = 3, markers: bool = False, opacity: float = 1.0) -> dict[str, Any]:
    """Build a legend-only trace (no data point): a run's entry or the key to one line style."""
    return {"type": "scatter", "mode": "lines+markers" if markers else "lines", "x": [None], "y": [None],
            "name": plotly_text(name), "legendgroup": group, "showlegend": True, "hoverinfo": "skip",
            "line": {"color": colour, "dash": dash, "width": width}, "marker": {"size": 5, "color": colour},
            "opacity": opacity}


def run_entries(runs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Legend entries for (run name, colour) pairs; clicking one hides or shows that run."""
    return [legend_entry(name, group=name, colour=colour) for name, colour in runs]


def style_entries(splits: set[str], measured: str = "", expected: str = "") -> list[dict[str, Any]]:
    """Grey legend entries naming the styles in use: train and eval lines of the `measured`
    quantity, and the wide pale line of the `expected` one."""
    suffix = f" · {measured}" if measured else ""
    entries = []
    if "train" in splits:
        entries.append(legend_entry(f"train{suffix}", group="style-train", width=2))
    if "eval" in splits:
        entries.append(legend_entry(f"eval{suffix}", group="style-eval", width=2, dash="dash", markers=True))
    if splits - {"train", "eval"}:
        entries.append(legend_entry(f"other splits{suffix}", group="style-other", width=2, dash="dot"))
    if expected:
        entries.append(legend_entry(expected, group="style-expected", width=7, opacity=0.3))
    return entries


def plotly_text(text: str) -> str:
    """Escape `text` for plotly, which parses legend, hover and title strings as an HTML subset
    and decodes entities back, so the original characters show as text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def hline(value: float, panel: int = 0, text: str = "") -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Build a dotted grey horizontal reference line across one panel, with an optional label."""
    xaxis, yaxis = axis_names(panel)
    shape = {"type": "line", "xref": f"{xaxis} domain", "x0": 0, "x1": 1, "yref": yaxis,
             "y0": value, "y1": value, "line": {"color": "#777", "width": 1, "dash": "dot"}}
    if not text:
        return shape, None
    label = {"xref": f"{xaxis} domain", "x": 1, "xanchor": "right", "yref": yaxis, "y": value,
             "yanchor": "bottom", "text": text, "showarrow": False,
             "font": {"size": 11, "color": "#555"}}
    return shape, label


def layout(panels: list[str], *, y_titles: list[str], x_title: str = "step", height: int = 420,
           shared_y: bool = False) -> dict[str, Any]:
    """Build a layout with `len(panels)` side-by-side panels titled by `panels`."""
    count = len(panels)
    gap = 0.07 if count > 1 else 0.0
    width = (1 - gap * (count - 1)) / count
    # The bottom margin contains the tick labels, the x-axis title and one or two legend rows, so
    # the legend sits 56 px under the plot area without plotly growing the margin.
    margin = {"l": 64, "r": 20, "t": 56 if count > 1 else 36, "b": 110}
    legend_y = -56 / (height - margin["t"] - margin["b"])
    result: dict[str, Any] = {
        "height": height, "margin": margin,
        "font": {"family": FONT, "size": 12, "color": "#222"},
        "paper_bgcolor": "#fff", "plot_bgcolor": "#fff", "hovermode": "closest",
        "legend": {"orientation": "h", "y": legend_y, "yanchor": "top", "x": 0, "font": {"size": 11}},
        "annotations": [], "shapes": [],
    }
    for index, title in enumerate(panels):
        xaxis, yaxis = axis_names(index)
        start = index * (width + gap)
        result[layout_key(xaxis)] = {"domain": [start, start + width], "anchor": yaxis,
                                      "title": {"text": x_title}, **_AXIS}
        y_axis = {"anchor": xaxis, "title": {"text": y_titles[index]}, **_AXIS}
        if shared_y and index:
            y_axis["matches"] = "y"
        result[layout_key(yaxis)] = y_axis
        if count > 1:
            result["annotations"].append({"text": f"<b>{title}</b>", "showarrow": False,
                                          "xref": "paper", "yref": "paper", "x": start + width / 2,
                                          "y": 1.0, "yanchor": "bottom", "xanchor": "center",
                                          "font": {"size": 13}})
    return result


_AXIS = {"showline": True, "linecolor": "#999", "gridcolor": "#e6e6e6", "zeroline": False,
         "ticks": "outside", "tickcolor": "#999", "automargin": True}


def layout_key(axis: str) -> str:
    """Return the layout key of an axis that traces name "x2" or "y": "xaxis2", "yaxis"."""
    return f"{axis[0]}axis{axis[1:]}"
