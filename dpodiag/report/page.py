"""The report page: one self-contained HTML file rendered from a Diagnosis."""

from __future__ import annotations

import functools
from datetime import datetime, timezone
from typing import Any

import jinja2

from dpodiag import __version__
from dpodiag.report.binned import calibration_chart, length_chart
from dpodiag.report.embed import PLOTLY_VERSION, plotly_bundle_base64, script_json
from dpodiag.report.examples import drilldown
from dpodiag.report.figures import (accuracy_chart, drift_chart, logps_chart, loss_chart, probability_chart,
                                    rewards_chart, weights_chart)
from dpodiag.report.overlay import Chart, progress_scales
from dpodiag.report.tables import appendix_rows, comparison_rows, finding_views, run_rows
from dpodiag.report.traces import run_colour

# Chart builders in page order: the objective first, then the reward model, then data effects.
CHART_BUILDERS = [loss_chart, rewards_chart, accuracy_chart, probability_chart, weights_chart,
                  drift_chart, logps_chart, length_chart, calibration_chart]


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """Return the Jinja2 environment of the report templates, with autoescaping on for every template."""
    return jinja2.Environment(loader=jinja2.PackageLoader("dpodiag.report", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def verdict(diagnosis) -> dict[str, Any]:
    """Summarise the findings as the verdict: a severity class, one sentence, and the runs concerned."""
    counts = {severity: sum(1 for f in diagnosis.findings if f.severity == severity)
              for severity in ("error", "warning", "info")}
    runs_with = {severity: [data.name for data in diagnosis.runs
                            if any(f.run == data.name and f.severity == severity for f in diagnosis.findings)]
                 for severity in ("error", "warning")}
    if counts["error"]:
        headline = (f"Not sound: {counts['error']} error(s) in {len(runs_with['error'])} of "
                    f"{len(diagnosis.runs)} run(s). The objective or the data is wrong.")
        level = "error"
    elif counts["warning"]:
        headline = (f"No error, {counts['warning']} warning(s): the objective checks pass, "
                    "but the training dynamics need a look.")
        level = "warning"
    else:
        headline = "No error or warning: every check that applies passed."
        level = "ok"
    return {"level": level, "headline": headline, "counts": counts, "runs_with": runs_with}


def build_charts(runs) -> list[Chart]:
    """Build every chart of the report, in page order."""
    return [builder(runs) for builder in CHART_BUILDERS]


def render_html(diagnosis, title: str | None = None) -> str:
    """Render `diagnosis` as one self-contained HTML page (plotly.js embedded, no external request)."""
    runs = diagnosis.runs
    charts = build_charts(runs)
    names = ", ".join(data.name for data in runs)
    if len(runs) > 3:
        names = f"{len(runs)} runs"
    context = {
        "title": title or f"dpodiag report: {names}",
        "version": __version__,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "runs": run_rows(runs),
        "verdict": verdict(diagnosis),
        "findings": finding_views(diagnosis.findings, runs, {chart.id: f"{number}: {chart.title}"
                                                             for number, chart in enumerate(charts, 1)
                                                             if chart.figure}),
        "charts": charts,
        "progress_axis": progress_scales(runs) is not None,
        "figures": {chart.id: script_json(chart.figure) for chart in charts if chart.figure},
        "comparison": comparison_rows(runs, diagnosis.findings),
        "colours": [run_colour(index) for index in range(len(runs))],
        "examples": drilldown(runs),
        "appendix": [appendix_rows(data, diagnosis.findings) for data in runs],
        "plotly_version": PLOTLY_VERSION,
        "plotly_base64": plotly_bundle_base64(),
    }
    return environment().get_template("report.html.j2").render(**context)
