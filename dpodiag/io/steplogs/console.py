"""Console captures that hold the HF Trainer's printed log dicts.

Sources: stdout, SLURM `.out` files, W&B `files/output.log`, logs pasted into Markdown or text.
Each record is a Python-repr dict such as `{'loss': 0.6931, 'rewards/chosen': nan, ...}`. It may
sit in the middle of a tqdm line (after carriage-return redraws), be hard-wrapped across lines in
a paste, or be cut off where an excerpt ends. Dicts are parsed with `ast.literal_eval` after bare
`nan`/`inf` are replaced; nothing is ever evaluated as code.
"""

from __future__ import annotations

import ast
import bisect
import json
import math
import re
from pathlib import Path
from typing import Any

from dpodiag.dialects import DIALECTS, HF_SUMMARY_KEYS, split_key
from dpodiag.errors import NoDataError
from dpodiag.io.source import read_text
from dpodiag.io.steplogs.sidecars import banner_values
from dpodiag.io.steplogs.table import RawLog, numeric_items

_DICT_START = re.compile(r"\{\s*['\"]")
_METRIC_DICT = re.compile(r"\{\s*'(?:loss|eval_[\w/]+|train_runtime|learning_rate|grad_norm|"
                          r"rewards/\w+|logps/\w+|epoch)'\s*:")
# transformers 5 prints every float as a string formatted with "{:.4g}", as in {'loss': '0.6931'}.
_ANY_DICT = re.compile(r"\{\s*'[\w/.-]+'\s*:\s*'?-?(?:\d|nan|inf|tensor|np\.)")
_NUMBER_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)",
                          re.IGNORECASE)
_NON_FINITE = re.compile(r"(?<=[:,\[])(\s*)(-?)(nan|inf|NaN|Infinity)(?=\s*[,}\]])")
_WRAPPERS = re.compile(r"\b(?:tensor|np\.float\d*|np\.int\d*|numpy\.float\d*)\(\s*"
                       r"([^(),]+?)\s*(?:,[^()]*)?\)")
_LINE_BREAK = re.compile(r"[\r\n]+[ \t>]*")
_SENTINELS = {"__nan__": math.nan, "__inf__": math.inf, "__-inf__": -math.inf}
_KNOWN = set(DIALECTS["generic"].aliases) | HF_SUMMARY_KEYS
MAX_DICT_CHARS = 100_000


def sniff(path: Path, head: bytes) -> str | None:
    """Return "console" when the text contains a printed metrics dict."""
    text = head.decode("utf-8", errors="replace")
    if not _ANY_DICT.search(text):
        return None
    found, _ = extract_dicts(text)
    return "console" if found else None


def read(path: Path, fmt: str = "console") -> RawLog:
    """Read every printed metrics dict of a console capture, in file order."""
    text = read_text(path)
    found, notes = extract_dicts(text)
    if not found:
        lines = max(len(text.splitlines()), 1)
        fix = "pass a file that contains the printed training dicts"
        header = next((line for line in text.splitlines() if line.strip()), "")
        for separator, suffix in ((",", ".csv"), ("\t", ".tsv")):
            if header.count(separator) >= 2 and "{" not in header:
                fix = f"its first line reads like a table header; rename it to end in {suffix}"
                break
        raise NoDataError(path, f"lines 1-{lines}: no metrics found in this console log", fix)
    records, dropped = [], set()
    for _, parsed in found:
        record, text_keys = numeric_items(parsed)
        records.append(record)
        dropped.update(text_keys)
    if dropped:
        notes.append(f"non-numeric fields not read: {', '.join(sorted(dropped))}")
    notes.append(f"{len(records)} printed dicts read, lines {found[0][0]}-{found[-1][0]}")
    # Training scripts print their settings before the first log dict.
    first = _ANY_DICT.search(text)
    banner = banner_values(text[:first.start() if first else len(text)])
    return RawLog(records=records, format="console", notes=notes, hints={"banner": banner})


def extract_dicts(text: str) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """Find the printed metrics dicts in `text`; return [(line number, dict)] and notes."""
    newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(offset: int) -> int:
        return bisect.bisect_right(newlines, offset) + 1

    found: list[tuple[int, dict[str, Any]]] = []
    notes: list[str] = []
    broken: list[int] = []
    position = 0
    while match := _DICT_START.search(text, position):
        start = match.start()
        end = text.find("}", start)

        # A dict with no closing brace before the end of the file was cut off.
        if end == -1:
            if _looks_like_metrics(text[start:start + 2000]):
                notes.append(f"line {line_of(start)}: the last record is cut off where the file "
                             "ends; the complete records before it were read")
            break

        # Another dict starting inside this one means this one is broken or nested.
        candidate = text[start:end + 1]
        inner = _DICT_START.search(candidate, 1)
        if inner or len(candidate) > MAX_DICT_CHARS:
            if _looks_like_metrics(candidate[:inner.start() if inner else 2000]):
                broken.append(line_of(start))
            position = start + (inner.start() if inner else 1)
            continue

        parsed = parse_dict(candidate)
        if parsed is not None and _is_metrics(parsed):
            found.append((line_of(start), parsed))
        elif parsed is None and _looks_like_metrics(candidate):
            broken.append(line_of(start))
        position = end + 1
    if broken:
        listed = ", ".join(str(line) for line in broken[:5]) + (", ..." if len(broken) > 5 else "")
        many = len(broken) > 1
        notes.append(f"{len(broken)} printed dict{'s' if many else ''} could not be parsed and "
                     f"{'were' if many else 'was'} skipped (line{'s' if many else ''} {listed})")
    return found, notes


def parse_dict(candidate: str) -> dict[str, Any] | None:
    """Parse one printed dict (joined across line breaks) without evaluating code."""
    joined = candidate
    if "\n" in joined or "\r" in joined:
        joined = _LINE_BREAK.sub("", joined)
    if "(" in joined:
        joined = _WRAPPERS.sub(r"\1", joined)
    fast = _parse_as_json(joined)
    if fast is not None:
        return _numbers_from_text(fast)
    joined = _NON_FINITE.sub(_sentinel, joined)
    try:
        value = ast.literal_eval(joined)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    return _numbers_from_text({key: _SENTINELS.get(item, item) if isinstance(item, str) else item
                               for key, item in value.items()})


def _numbers_from_text(parsed: dict[str, Any]) -> dict[str, Any]:
    # Values printed as formatted strings ('0.6931', 'nan') become floats; other text stays.
    return {key: float(item) if isinstance(item, str) and _NUMBER_TEXT.fullmatch(item) else item
            for key, item in parsed.items()}


def _parse_as_json(text: str) -> dict[str, Any] | None:
    # Most log dicts hold only quoted keys and numbers, which the C JSON parser reads about
    # ten times faster than ast.literal_eval once single quotes become double quotes.
    if '"' in text or "\\" in text:
        return None
    try:
        value = json.loads(_NON_FINITE.sub(_json_token, text.replace("'", '"')))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _json_token(match: re.Match[str]) -> str:
    sign, word = match.group(2), match.group(3).lower()
    return match.group(1) + ("NaN" if word == "nan" else f"{sign}Infinity")


def _sentinel(match: re.Match[str]) -> str:
    # Python prints nan, inf, -inf; json prints NaN, Infinity, -Infinity.
    sign, word = match.group(2), match.group(3).lower()
    name = "nan" if word == "nan" else f"{sign}inf"
    return f"{match.group(1)}'__{name}__'"


def _is_metrics(parsed: dict[str, Any]) -> bool:
    # A training-log dict has string keys, numeric values and at least one known metric key.
    if not all(isinstance(key, str) for key in parsed):
        return False
    numeric, _ = numeric_items(parsed)
    return bool(numeric) and any(split_key(key)[1] in _KNOWN or key in _KNOWN
                                 for key in numeric if key not in ("epoch", "step"))


def _looks_like_metrics(text: str) -> bool:
    return bool(_METRIC_DICT.match(_LINE_BREAK.sub("", text)))
