"""The HTML report without a browser: contents, escaping, size, step logs and page outline."""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from report_inputs import (HOSTILE_COLUMN, IMG_ONERROR, SCRIPT_BREAKOUT, diagnose_data, hostile_diagnosis,
                      step_log_run)
from cases import healthy_steps, step_run
from synthetic import SAMPLE_LOGS, make_pairs, write_parquet

import dpodiag
from dpodiag.checks import REGISTRY
from dpodiag.pipeline import analyse
from dpodiag.report import write_report
from dpodiag.report.embed import round_significant, script_json
from dpodiag.report.overlay import log_scale_needed
from dpodiag.report.page import render_html
from dpodiag.report.tables import CHART_OF_CHECK, NO_CHART
from dpodiag.report.traces import downsample, envelope

GOLDEN = Path(__file__).parent / "golden" / "outline.txt"
MAX_BYTES = 2_000_000


def figure_blocks(html: str) -> dict[str, dict]:
    """The chart figures embedded in the page, by chart id."""
    blocks = re.findall(r'<script type="application/json" id="figure-([\w-]+)">(.*?)</script>', html, re.S)
    return {chart: json.loads(text) for chart, text in blocks}


def pair_runs(folder: Path, count: int, **options) -> list:
    """`count` synthetic pair-log runs named run-1, run-2, ..."""
    paths = []
    for index in range(count):
        frame = make_pairs(seed=index, **options).with_columns(run=pl.lit(f"run-{index + 1}"))
        paths.append(write_parquet(frame, folder / f"run-{index + 1}.parquet", beta=0.1, loss_type="sigmoid"))
    return dpodiag.load(paths)


# script_json and the numbers it embeds

def test_script_json_escapes_markup():
    text = str(script_json({"name": "</script><!-- & \u2028 \u2029 >"}))
    for raw in ("<", ">", "&", "\u2028", "\u2029"):
        assert raw not in text
    assert json.loads(text) == {"name": "</script><!-- & \u2028 \u2029 >"}


def test_script_json_rounds_and_nulls():
    values = json.loads(str(script_json([np.float64(1.234567), float("nan"), np.array([float("inf"), 2])])))
    assert values == [1.235, None, [None, 2]]


def test_round_significant_digits():
    assert round_significant(123456.7) == 123500.0
    assert round_significant(-0.000123456) == -0.0001235


def test_downsample_keeps_extremes():
    x = np.arange(10_000)
    y = np.sin(x / 500.0)
    y[4321] = 50.0
    y[777] = np.nan
    small_x, small_y = downsample(x, y, max_points=240)
    assert len(small_x) <= 240
    assert 4321 in small_x
    assert 777 in small_x
    assert small_x[0] == 0
    assert small_x[-1] == 9_999


def test_envelope_never_narrower():
    x = np.arange(5_000)
    low, high = np.zeros(5_000), np.ones(5_000)
    low[1234], high[4321] = -3.0, 9.0
    _, reduced = envelope(x, {"probability_q05": low, "probability_q95": high}, upper={"probability_q95"},
                          max_points=100)
    assert reduced["probability_q05"].min() == -3.0
    assert reduced["probability_q95"].max() == 9.0


# Contents

def test_report_has_sections_and_charts(tmp_path):
    html = render_html(dpodiag.diagnose(pair_runs(tmp_path, 2, eval_every=5), device="cpu"))
    for section in ("verdict", "charts", "comparison", "examples", "appendix"):
        assert f'id="{section}"' in html
    charts = figure_blocks(html)
    assert set(charts) == {"chart-loss", "chart-rewards", "chart-accuracy", "chart-probability",
                           "chart-weights", "chart-drift", "chart-logps", "chart-length", "chart-calibration"}
    for figure in charts.values():
        assert figure["data"]
    assert "Not drawn" not in html
    assert set(CHART_OF_CHECK.values()) <= set(charts)


def test_check_chart_links_complete():
    assert not set(CHART_OF_CHECK) & NO_CHART
    assert set(CHART_OF_CHECK) | NO_CHART == set(REGISTRY)


def test_run_colours_match_across_charts(tmp_path):
    html = render_html(dpodiag.diagnose(pair_runs(tmp_path, 3), device="cpu"))
    colours: dict[str, set[str]] = {}
    for figure in figure_blocks(html).values():
        for trace in figure["data"]:
            if trace.get("legendgroup", "").startswith("run-"):
                colours.setdefault(trace["legendgroup"], set()).add(trace["line"]["color"])
    assert set(colours) == {"run-1", "run-2", "run-3"}
    assert all(len(used) == 1 for used in colours.values())
    assert len({next(iter(used)) for used in colours.values()}) == 3


def test_loss_axis_log_when_scales_differ(tmp_path):
    # The IPO sample's loss is about 10-25 nats, the others' below 1.
    runs = dpodiag.load([SAMPLE_LOGS / "healthy.parquet", SAMPLE_LOGS / "ipo-recorded-as-sigmoid.parquet"])
    html = render_html(dpodiag.diagnose(runs, device="cpu"))
    loss = figure_blocks(html)["chart-loss"]
    assert loss["layout"]["yaxis"]["type"] == "log"
    assert "The y-axis of the loss panel is logarithmic" in html


def test_loss_axis_linear_when_scales_match(tmp_path):
    html = render_html(dpodiag.diagnose(pair_runs(tmp_path, 2), device="cpu"))
    loss = figure_blocks(html)["chart-loss"]
    assert "type" not in loss["layout"]["yaxis"]
    assert "logarithmic" not in html


def trace(run: str, values: list[float]) -> dict:
    return {"yaxis": "y", "legendgroup": run, "y": values}


def test_log_axis_for_runs_of_other_scales():
    assert log_scale_needed([trace("a", [0.5, 0.4]), trace("b", [20.0, 15.0])], 0)
    # A negative value has no place on a log axis.
    assert not log_scale_needed([trace("a", [0.5, -0.1]), trace("b", [20.0, 15.0])], 0)


def test_no_log_axis_for_values_near_zero():
    # A margin of 1e-9 at the first step would stretch a log axis over ten decades.
    assert not log_scale_needed([trace("a", [1e-9, 0.4]), trace("b", [20.0, 15.0])], 0)


def test_log_margin_panel_drops_zero_guide():
    # Two step logs whose margins differ 50 times: the margin panel is logarithmic, without a line at 0.
    small, large = healthy_steps(), healthy_steps()
    large["rewards_margins"] = np.asarray(large["rewards_margins"]) * 50
    runs = [step_run(small, name="small"), step_run(large, name="large")]
    rewards = figure_blocks(render_html(dpodiag.diagnose(runs, device="cpu")))["chart-rewards"]
    assert rewards["layout"]["yaxis3"]["type"] == "log"
    assert not [shape for shape in rewards["layout"]["shapes"] if shape["yref"] == "y3" and shape["y0"] <= 0]


def test_missing_lengths_replace_chart(tmp_path):
    runs = pair_runs(tmp_path, 1)
    runs[0].table = runs[0].table.drop("chosen_length", "rejected_length")
    html = render_html(dpodiag.diagnose(runs, device="cpu"))
    assert "chart-length" not in figure_blocks(html)
    assert "Not drawn: needs chosen_length/rejected_length columns in a pair log." in html


def test_unequal_lengths_use_progress_axis(tmp_path):
    short = make_pairs(steps=10).with_columns(run=pl.lit("short"))
    long = make_pairs(steps=100).with_columns(run=pl.lit("long"))
    paths = [write_parquet(frame, tmp_path / f"{name}.parquet", beta=0.1, loss_type="sigmoid")
             for name, frame in (("short", short), ("long", long))]
    html = render_html(dpodiag.diagnose(dpodiag.load(paths), device="cpu"))
    figure = figure_blocks(html)["chart-loss"]
    assert figure["layout"]["xaxis"]["title"]["text"].startswith("progress")
    drawn = [trace for trace in figure["data"] if trace["x"] != [None]]
    assert all(max(trace["x"]) <= 1.0 for trace in drawn)
    assert max(max(trace["customdata"]) for trace in drawn) == 99
    assert "charts over training show training progress" in html


def test_preference_strength_gives_reliability(tmp_path):
    frame = make_pairs(steps=20, pairs=64, noise=1.0)
    frame = frame.with_columns(preference_strength=(pl.col("example_id").str.extract(r"(\d+)$").cast(pl.Float64)
                                                    / 64.0))
    path = write_parquet(frame, tmp_path / "strength.parquet", beta=0.1, loss_type="sigmoid")
    html = render_html(dpodiag.diagnose(dpodiag.load([path]), device="cpu"))
    assert "Calibration: reliability diagram" in html
    traces = figure_blocks(html)["chart-calibration"]["data"]
    points = [trace for trace in traces if trace["x"] != [None]]
    assert len(points) == 1
    assert all(0 <= value <= 1 for value in points[0]["x"] + points[0]["y"])


def test_comparison_deltas_against_first_run(tmp_path):
    html = render_html(dpodiag.diagnose(pair_runs(tmp_path, 2, steps=12), device="cpu"))
    comparison = html[html.index('id="comparison"'):html.index('id="examples"')]
    assert "logged train steps" in comparison
    assert '<span class="delta">±0</span>' in comparison


def test_drilldown_shows_flips_and_texts(tmp_path):
    frame = make_pairs(steps=12, pairs=8, noise=0.5, chosen_drift=-0.2, rejected_drift=0.2)
    frame = frame.with_columns(prompt=pl.lit("P" * 5_000), chosen=pl.lit("good"), rejected=pl.lit("bad"))
    path = write_parquet(frame, tmp_path / "texts.parquet", beta=0.1, loss_type="sigmoid")
    html = render_html(dpodiag.diagnose(dpodiag.load([path]), device="cpu"))
    examples = html[html.index('id="examples"'):html.index('id="appendix"')]
    assert "Largest loss at the last scoring" in examples
    assert "[3,800 more characters]" in examples
    assert "P" * 5_000 not in examples
    assert "→ rejected" not in examples
    assert "<td>rejected</td>" in examples


# Escaping and self-containment

def test_hostile_strings_escaped(tmp_path):
    html = render_html(hostile_diagnosis(tmp_path))
    assert SCRIPT_BREAKOUT not in html
    assert IMG_ONERROR not in html
    assert html.count("<script") == len(figure_blocks(html)) + 2
    assert "&lt;/script&gt;&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert "loss &lt;img src=x onerror=&#34;window.__pwned=1&#34;&gt;" in html


def test_hostile_column_name_in_appendix(tmp_path):
    html = render_html(hostile_diagnosis(tmp_path))
    appendix = html[html.index('id="appendix"'):]
    escaped = HOSTILE_COLUMN.replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;")
    assert f"<code>loss</code> ← <code>{escaped}</code>" in appendix


def test_no_external_resources(tmp_path):
    html = render_html(dpodiag.diagnose(pair_runs(tmp_path, 1), device="cpu"))
    assert re.findall(r'\bsrc\s*=', html.split('id="plotly-bundle"')[0]) == []
    assert all(link.startswith("#") for link in re.findall(r'\bhref\s*=\s*"([^"]*)"', html))
    assert "<link" not in html
    assert "@import" not in html
    assert "url(" not in html


def test_plotly_embedded_once(tmp_path):
    html = render_html(dpodiag.diagnose(pair_runs(tmp_path, 2), device="cpu"))
    (encoded,) = re.findall(r'<script type="application/octet-stream" id="plotly-bundle"[^>]*>([^<]*)</script>', html)
    bundle = resources.files("dpodiag.report").joinpath("assets", "plotly-basic.min.js").read_bytes()
    assert gzip.decompress(base64.b64decode(encoded)) == bundle
    assert html.count("Plotly.newPlot") == 1


# Size and levels of evidence

def test_five_big_runs_under_2mb(tmp_path):
    paths = []
    for index in range(5):
        frame = make_pairs(steps=2_000, pairs=24, eval_every=50, seed=index)
        # Long texts on the last step only, so the drill-down has texts to cut.
        last = pl.col("step") == pl.col("step").max()
        frame = frame.with_columns(run=pl.lit(f"big-{index} " + "n" * 200),
                                   prompt=pl.when(last).then(pl.lit("p" * 20_000)),
                                   chosen=pl.when(last).then(pl.lit("c" * 20_000)),
                                   rejected=pl.when(last).then(pl.lit("r" * 20_000)))
        paths.append(write_parquet(frame, tmp_path / f"big-{index}.parquet", beta=0.1, loss_type="sigmoid"))
    diagnosis = dpodiag.diagnose(dpodiag.load(paths), device="cpu")
    assert sum(data.run.table.height for data in diagnosis.runs) > 240_000
    written = write_report(diagnosis, tmp_path / "big.html")
    assert written.stat().st_size < MAX_BYTES


def test_step_log_without_pairs():
    html = render_html(diagnose_data([step_log_run()]))
    charts = figure_blocks(html)
    assert {"chart-loss", "chart-rewards", "chart-accuracy", "chart-logps"} <= set(charts)
    for chart in ("chart-probability", "chart-weights", "chart-drift", "chart-length", "chart-calibration"):
        assert chart not in charts
    assert "Not drawn: needs a pair log (per-pair margins); step logs carry no distribution." in html
    assert "A step log has no per-pair rows" in html
    assert "2 records without a step were dropped" in html


def test_step_log_beside_pair_log(tmp_path):
    pairs = analyse(pair_runs(tmp_path, 1)[0], device="cpu")
    html = render_html(diagnose_data([pairs, step_log_run()]))
    assert "No data for this chart in: steps-only." in html
    loss_names = {trace["legendgroup"] for trace in figure_blocks(html)["chart-loss"]["data"]}
    assert {"run-1", "steps-only"} <= loss_names


# Outline

class Outline(HTMLParser):
    """Headings and element ids of a page. In the verdict only its h2 is kept: the finding
    cards and their group headings change with every check added."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []
        self.heading: str | None = None
        self.text = ""
        self.section: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "section" and attributes.get("id") in SECTIONS:
            self.section = attributes["id"]
        if self.section == "verdict" and tag != "h2" and attributes.get("id") != "verdict":
            return
        if attributes.get("id"):
            self.lines.append(f"#{attributes['id']}")
        if tag in ("h1", "h2", "h3", "h4"):
            self.heading, self.text = tag, ""

    def handle_endtag(self, tag):
        if tag == self.heading:
            self.lines.append(f"{tag} {' '.join(self.text.split())}")
            self.heading = None

    def handle_data(self, data):
        if self.heading:
            self.text += data


SECTIONS = {"verdict", "charts", "comparison", "examples", "appendix"}


def outline(html: str) -> str:
    parser = Outline()
    parser.feed(html)
    return "\n".join(parser.lines) + "\n"


def test_page_outline_golden(tmp_path):
    diagnosis = dpodiag.diagnose(pair_runs(tmp_path, 2, eval_every=5), device="cpu")
    step_log = step_log_run()
    diagnosis.runs.append(step_log)
    actual = outline(render_html(diagnosis, title="outline"))
    if os.environ.get("DPODIAG_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(actual)
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing; run the test with DPODIAG_UPDATE_GOLDEN=1 to write it")
    assert actual == GOLDEN.read_text()
