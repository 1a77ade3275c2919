"""JSON Lines step logs: LLaMA-Factory's `trainer_log.jsonl`, torchtune's JSONL DiskLogger form
and any other file with one JSON object of metrics per line (such as the learning-dynamics
probes written by forks of the eric-mitchell DPO repo).

LLaMA-Factory writes one line per logging call on rank 0: current_steps, total_steps, loss,
accuracy (its name for rewards/accuracies), learning_rate, epoch and timing strings, and no
rewards or log-probs.
"""

from __future__ import annotations

import json
from pathlib import Path

from dpodiag.errors import NoDataError
from dpodiag.io.source import logical_suffix, read_text
from dpodiag.io.steplogs.table import RawLog, is_pair_record, numeric_items


def sniff(path: Path, head: bytes) -> str | None:
    """Return "llamafactory-jsonl" or "jsonl" when the first lines are JSON objects."""
    lines = [line for line in head.decode("utf-8", errors="replace").splitlines() if line.strip()]
    if len(lines) < 1 or not lines[0].lstrip().startswith("{"):
        return None
    try:
        first = json.loads(lines[0])
    except ValueError:
        return None
    if not isinstance(first, dict) or is_pair_record(first):
        return None
    if len(lines) == 1 and logical_suffix(path) != ".jsonl":
        return None
    return "llamafactory-jsonl" if "current_steps" in first else "jsonl"


def read(path: Path, fmt: str) -> RawLog:
    """Read one record per JSON line; skip a last line cut off where the file ends."""
    text = read_text(path)
    lines = text.splitlines()
    records, notes, bad = [], [], []
    dropped: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            is_last = number == len(lines) and not text.endswith("\n")
            if is_last:
                notes.append(f"line {number}: the last record is cut off where the file ends "
                             "and was skipped")
            else:
                bad.append(number)
            continue
        if isinstance(item, dict):
            record, text_keys = numeric_items(item)
            records.append(record)
            dropped.update(text_keys)
    if bad:
        listed = ", ".join(str(n) for n in bad[:5])
        notes.append(f"{len(bad)} lines are not valid JSON and were skipped (lines {listed})")
    if dropped:
        notes.append(f"non-numeric fields not read: {', '.join(sorted(dropped))}")
    if not records:
        raise NoDataError(path, f"no JSON records found in its {len(lines)} lines",
                          "pass a JSON Lines log with one metrics object per line")
    return RawLog(records=records, format=fmt, notes=notes)
