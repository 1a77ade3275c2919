"""JSON documents that hold step logs: HF trainer_state.json, bare log_history arrays, project
wrappers around a log_history copy, HF `*_results.json`, W&B `wandb-summary.json` and
`{tag: {step, value}}` summaries.

HF writes bare `NaN` and `Infinity` tokens that strict JSON forbids; Python's json module reads
them, so it is used as is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dpodiag.dialects import DIALECTS, HF_SUMMARY_KEYS, split_key
from dpodiag.errors import InputError, NoDataError
from dpodiag.io.source import read_text
from dpodiag.io.steplogs.sidecars import config_values, describe
from dpodiag.io.steplogs.table import RawLog, is_pair_record, numeric_items

SNIFF_PARSE_LIMIT = 1_000_000
# Formats whose records sit in one JSON list, so that a file cut off mid-write keeps the
# records before the cut.
HISTORY_FORMATS = ("trainer-state", "log-history-wrapper", "log-history-array")
_HISTORY_START = re.compile(r'"\w*log_history"\s*:\s*\[|^\s*\[')
_KNOWN = DIALECTS["generic"].aliases


def load_json(path: Path, fmt: str | None = None) -> Any:
    """Parse a JSON file; raise InputError naming the line of the first syntax error.

    For a format in HISTORY_FORMATS, a file that ends in the middle of the document (a trainer
    still writing it) gives a RawLog of its complete records in place of the parsed data.
    """
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        recovered = _cut_history(path, text, error, fmt) if fmt in HISTORY_FORMATS else None
        if recovered is None:
            raise InputError(path, f"line {error.lineno}: invalid JSON ({error.msg})",
                             "pass the file as the trainer wrote it") from None
        return recovered


def _cut_history(path: Path, text: str, error: json.JSONDecodeError, fmt: str) -> RawLog | None:
    # Decode the records of the log_history list one by one, up to the cut. Return None when
    # the syntax error is not a cut: a broken record with more text after it, or an error
    # before the end of a complete list.
    start = _HISTORY_START.search(text)
    if start is None:
        return None
    decoder = json.JSONDecoder()
    items: list[Any] = []
    position = start.end()

    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text):
            break
        if text[position] == "]":
            if error.pos < position:
                return None
            break
        try:
            item, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            # HF log records are flat objects: a cut one has no closing brace after its start.
            if "}" in text[position:]:
                return None
            break
        items.append(item)

    if not any(isinstance(item, Mapping) for item in items):
        raise NoDataError(path, f"line {error.lineno}: the file is cut off before its first "
                          "complete log_history record", "pass the file once the trainer has "
                          "written it completely")
    note = (f"line {error.lineno}: the file is cut off there (the trainer was still writing "
            f"it, or stopped); the {len(items)} complete log_history records before the cut "
            "were read")
    return _from_dicts(path, items, fmt, [note])


def sniff(path: Path, head: bytes) -> str | None:
    """Return the JSON step-log format of a file, or "json-summary" for a summary without steps."""
    text = head.lstrip()
    if text[:1] not in (b"{", b"["):
        return None
    if len(head) <= SNIFF_PARSE_LIMIT:
        # The head is the whole file.
        try:
            return classify(json.loads(head.decode("utf-8", errors="replace")))
        except ValueError:
            # A trainer_state.json cut off mid-write is still one.
            return "trainer-state" if b'"log_history"' in head else None
    if b'"log_history"' in head:
        return "trainer-state"
    if b"log_history" in head:
        return "log-history-wrapper"
    return "log-history-array" if text[:1] == b"[" else None


def classify(data: Any) -> str | None:
    """Name the JSON layout of parsed data, or None when it contains no step records."""
    if isinstance(data, list):
        if not data or not all(isinstance(item, Mapping) for item in data):
            return None
        return None if is_pair_record(data[0]) else "log-history-array"
    if not isinstance(data, Mapping):
        return None
    if isinstance(data.get("log_history"), list):
        return "trainer-state"
    if _history_key(data):
        return "log-history-wrapper"
    if any(k in data for k in ("_wandb", "_step", "_runtime")):
        return "wandb-summary"
    tagged = [v for v in data.values() if isinstance(v, Mapping) and {"step", "value"} <= set(v)]
    if tagged:
        return "tag-summary"
    if any(_is_hf_result_key(key) for key in data):
        return "hf-results"
    return "json-summary"


def _is_hf_result_key(key: str) -> bool:
    # HF's *_results.json hold eval_<metric> keys and the train_* summary keys.
    split, base = split_key(key)
    return key in HF_SUMMARY_KEYS or (split == "eval" and base in _KNOWN)


def _history_key(data: Mapping[str, Any]) -> str | None:
    # A wrapper's copy of log_history: a key ending in log_history whose value is a list of
    # dicts, or a key ending in history whose dicts each have a step (hand-written loops).
    for key, value in data.items():
        records = isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value)
        if records and (key.endswith("log_history")
                        or (key.endswith("history") and all("step" in item for item in value))):
            return key
    return None


def read(path: Path, fmt: str) -> RawLog:
    """Read a JSON step log of format `fmt` (one of the names `classify` returns)."""
    data = load_json(path, fmt)
    if isinstance(data, RawLog):
        return data
    if fmt == "json-summary" or classify(data) == "json-summary":
        keys = ", ".join(list(data)[:8]) if isinstance(data, Mapping) else ""
        raise NoDataError(path, f"contains run-level values and no per-step records (keys: {keys})",
                          "pass the trainer's log: trainer_state.json, a log_history JSON or "
                          "the console output")
    fmt = classify(data) or fmt
    if fmt in ("trainer-state", "log-history-wrapper"):
        key = "log_history" if fmt == "trainer-state" else _history_key(data)
        # A file that states the trainer's settings beside the records (beta, loss_type), as
        # project-specific exports do, declares them as a trainer config would.
        values, notes, hints = config_values({k: v for k, v in data.items() if k != key})
        values.pop("framework", None)  # a guess from the setting names, not stated by the file
        if values:
            notes.insert(0, f"settings read beside the records: {describe(values)}")
        own = _state_notes(data) if fmt == "trainer-state" else _wrapper_notes(data, key, set(values))
        raw = _from_dicts(path, data[key], fmt, [*own, *notes])
        raw.meta.update(values)
        raw.hints.update(hints)
        return raw
    if fmt == "log-history-array":
        return _from_dicts(path, data, fmt, [])
    if fmt == "tag-summary":
        return _tag_summary(path, data)
    if fmt in ("wandb-summary", "hf-results"):
        notes = ["final values only: one record per split, no history"]
        return _from_dicts(path, [data], fmt, notes)
    raise InputError(path, "is JSON but contains no training-log records",
                     "pass trainer_state.json, a log_history JSON or the console output")


def _from_dicts(path: Path, items: list[Any], fmt: str, notes: list[str]) -> RawLog:
    # Keep numeric values; name the text fields that a step table cannot hold.
    records, dropped = [], set()
    for item in items:
        if not isinstance(item, Mapping):
            continue
        record, text_keys = numeric_items(dict(item))
        records.append(record)
        dropped.update(key for key in text_keys if not key.startswith("_"))
    if not records:
        raise NoDataError(path, "the log_history list is empty",
                          "pass a state saved after the first logging step")
    if dropped:
        notes = [*notes, f"non-numeric fields not read: {', '.join(sorted(dropped))}"]
    return RawLog(records=records, format=fmt, notes=notes)


def _state_notes(state: Mapping[str, Any]) -> list[str]:
    # trainer_state.json records how often the trainer logged and evaluated.
    facts = {key: state[key] for key in ("global_step", "max_steps", "logging_steps", "eval_steps")
             if isinstance(state.get(key), (int, float))}
    return [f"trainer_state: {', '.join(f'{k}={v}' for k, v in facts.items())}"] if facts else []


def _wrapper_notes(data: Mapping[str, Any], key: str, settings: set[str]) -> list[str]:
    # Say which copy was read, and keep the wrapper's scalar metadata as notes.
    notes = [f"records read from the wrapper's {key!r} list"]
    others = [k for k in data if k not in (key, "metadata", *settings)]
    if others:
        notes.append(f"other wrapper keys not read: {', '.join(others)}")
    metadata = data.get("metadata")
    if isinstance(metadata, Mapping):
        scalars = {k: v for k, v in metadata.items() if isinstance(v, (str, int, float))}
        if scalars:
            notes.append("wrapper metadata: " + ", ".join(f"{k}={v}" for k, v in scalars.items()))
    return notes


def _tag_summary(path: Path, data: Mapping[str, Any]) -> RawLog:
    # {tag: {step, value}} entries become one record per step; flat numbers are summary values.
    by_step: dict[float, dict[str, float]] = {}
    flat = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and {"step", "value"} <= set(value):
            record, _ = numeric_items({key: value["value"], "step": value["step"]})
            if "step" in record and key in record:
                by_step.setdefault(record["step"], {"step": record["step"]})[key] = record[key]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = value
    notes = ["last value of each tag only, at the step where the tag was last written"]
    if flat:
        notes.append("summary values: " + ", ".join(f"{k}={v}" for k, v in flat.items()))
    records = [by_step[step] for step in sorted(by_step)]
    if not records:
        raise NoDataError(path, "no {step, value} entries found", "pass the full training log")
    return RawLog(records=records, format="tag-summary", notes=notes)
