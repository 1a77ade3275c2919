"""The report is safe to open: hostile strings from every input place end up as text, never as
markup or script, and the product never unpickles, evaluates or executes its input.

The browser tests in tests/report/ open a hostile report in Chromium. These tests need no
browser: they parse the page that `dpodiag report` writes and check where each string landed.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from make_corpus import log_records, pair_frame, trainer_state

PACKAGE = Path(__file__).resolve().parents[2] / "dpodiag"


def img(number: int) -> str:
    return f"<img src=x onerror=alert({number})>"


def script(number: int) -> str:
    return f"</script><script>alert({number})</script><!--"


# Every place where a string of the input reaches the page, with the hostile string put there.
PLACES = {
    "run name": script(1),
    "file name": img(2),
    "example id": img(3),
    "prompt text": script(4),
    "chosen text": img(5),
    "column mapped with --column": img(6),
    "column not read": img(7),
    "split name": script(8),
    "policy_model": script(9),
    "reference_model": img(10),
    "framework": img(11),
    "step-log key": "rewards/" + img(12),
    "step-log text field": script(13),
    "title": script(14),
}


class PageParser(HTMLParser):
    """Collect the start tags with their attributes, the script elements and the text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.text: list[str] = []
        self._script: dict[str, str | None] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.text.extend(value for _, value in attrs if value)
        if tag == "script":
            self._script = dict(attrs)
            self.scripts.append((self._script, ""))

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            attrs, body = self.scripts[-1]
            self.scripts[-1] = (attrs, body + data)
        else:
            self.text.append(data)


def write_inputs(folder: Path) -> list[str]:
    """Write two pair logs and a step log with hostile strings; return the report command."""
    column = PLACES["column mapped with --column"]
    first = pair_frame(steps=8, pairs=8, seed=1).rename({"loss": column}).with_columns(
        run=pl.lit(PLACES["run name"]),
        example_id=pl.format("{} {}", pl.lit(PLACES["example id"]), pl.col("example_id")),
        prompt=pl.lit(PLACES["prompt text"]), chosen=pl.lit(PLACES["chosen text"]),
        rejected=pl.lit("plain"),
        split=pl.when(pl.col("step") == 3).then(pl.lit(PLACES["split name"])).otherwise(pl.lit("train")))
    first = first.with_columns(pl.lit(1.0).alias(PLACES["column not read"]))
    first.write_parquet(folder / "first.parquet")
    sidecar = {"beta": 0.1, "loss_type": "sigmoid", "policy_model": PLACES["policy_model"],
               "reference_model": PLACES["reference_model"], "framework": PLACES["framework"]}
    (folder / "first.dpodiag.json").write_text(json.dumps(sidecar))

    # The second pair log is named by its file: a hostile file name is its run name.
    second = pair_frame(steps=8, pairs=8, seed=2).rename({"loss": column})
    second.write_csv(folder / f"{PLACES['file name']}.csv")

    # A step log whose keys are hostile: one numeric (an extra metric) and one text field.
    records = log_records(8)
    for record in records:
        record[column] = record.pop("loss")
        record[PLACES["step-log key"]] = 0.5
        record[PLACES["step-log text field"]] = "text"
    (folder / "trainer_state.json").write_text(trainer_state(records))
    return ["report", "first.parquet", f"{PLACES['file name']}.csv", "trainer_state.json",
            "--column", f"loss={column}", "--title", PLACES["title"], "--device", "cpu",
            "-o", "report.html"]


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> tuple[str, PageParser]:
    folder = tmp_path_factory.mktemp("hostile")
    result = subprocess.run([sys.executable, "-m", "dpodiag", *write_inputs(folder)], cwd=folder,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    html = (folder / "report.html").read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(html)
    parser.close()
    return html, parser


def json_strings(value) -> list[str]:
    """Every string in decoded JSON, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in [key, *json_strings(item)]]
    if isinstance(value, list):
        return [s for item in value for s in json_strings(item)]
    return []


def test_only_the_page_scripts(page):
    _, parser = page
    kinds = [(attrs.get("type"), attrs.get("id", "")) for attrs, _ in parser.scripts]
    figures = [kind for kind in kinds if kind[0] == "application/json"]
    assert all(identifier.startswith("figure-") for _, identifier in figures)
    assert kinds.count(("application/octet-stream", "plotly-bundle")) == 1
    assert kinds.count((None, "")) == 1
    assert len(kinds) == len(figures) + 2


def test_no_markup_from_input(page):
    html, parser = page
    assert not [tag for tag, _ in parser.tags if tag in ("img", "iframe", "object", "embed")]
    handlers = [(tag, name) for tag, attrs in parser.tags for name in attrs if name.startswith("on")]
    assert handlers == []
    outside = re.sub(r"<script\b[^>]*>.*?</script>", "", html, flags=re.S | re.I)
    assert "<script" not in outside.lower()
    assert "<img" not in outside.lower()
    assert not re.search(r"<[^>]*\sonerror\s*=", outside, flags=re.I)


def test_embedded_json_parses(page):
    _, parser = page
    blocks = [body for attrs, body in parser.scripts if attrs.get("type") == "application/json"]
    assert blocks
    for body in blocks:
        assert "<" not in body
        json.loads(body)


def test_page_loads_nothing_from_network(page):
    html, parser = page
    for tag, attrs in parser.tags:
        assert "src" not in attrs, tag
        href = attrs.get("href")
        assert href is None or href.startswith("#"), href
    assert not re.search(r"https?://", html.split('id="plotly-bundle"')[0])


@pytest.mark.parametrize("place", PLACES)
def test_hostile_string_shown_as_text(page, place):
    _, parser = page
    page_text = "\n".join(parser.text)
    for attrs, body in parser.scripts:
        if attrs.get("type") == "application/json":
            page_text += "\n" + "\n".join(json_strings(json.loads(body)))
    assert PLACES[place] in page_text


# Calls that would unpickle, evaluate or execute data: module.function names, and bare names.
FORBIDDEN_CALLS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"),
                   ("marshal", "load"), ("marshal", "loads"), ("torch", "load"),
                   ("dill", "load"), ("dill", "loads"), ("joblib", "load"), ("shelve", "open"),
                   ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load")}
FORBIDDEN_NAMES = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_MODULES = {"pickle", "marshal", "dill", "shelve", "joblib", "cloudpickle"}


def forbidden_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module in FORBIDDEN_MODULES:
            found.append(f"from {node.module} import")
        elif isinstance(node, ast.Call):
            function = node.func
            if isinstance(function, ast.Name) and function.id in FORBIDDEN_NAMES:
                found.append(f"{function.id}()")
            elif (isinstance(function, ast.Attribute) and isinstance(function.value, ast.Name)
                  and (function.value.id, function.attr) in FORBIDDEN_CALLS):
                found.append(f"{function.value.id}.{function.attr}()")
            elif isinstance(function, ast.Attribute) and function.attr == "load" and any(
                    k.arg == "allow_pickle" for k in node.keywords):
                found.append("load(allow_pickle=...)")
            found += [f"{k.arg}=True" for k in node.keywords if k.arg == "trust_remote_code"
                      and isinstance(k.value, ast.Constant) and k.value.value is True]
    return found


def test_forbidden_uses_detected():
    source = "import pickle\ntorch.load(f)\neval(x)\nm.eval()\nre.compile('a')\nast.literal_eval(s)\n"
    assert forbidden_uses(ast.parse(source)) == ["pickle", "torch.load()", "eval()"]


def test_package_never_unpickles_or_evaluates():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        uses = forbidden_uses(ast.parse(path.read_text(encoding="utf-8")))
        if uses:
            found[str(path.relative_to(PACKAGE.parent))] = uses
    assert found == {}
