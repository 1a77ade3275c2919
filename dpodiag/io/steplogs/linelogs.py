"""Plain-text step logs with one record per line or block, each trainer with its own layout.

- mlx-lm: `Iter 63: Train loss 0.000, Chosen reward -8.056, ..., Peak mem 2.334 GB`, and
  `Iter N: Val loss X, Val took Ys` for validation.
- torchtune DiskLogger (`log_<unix time>.txt`): `Step N | loss:0.69 rewards/chosen:0.01 ...`;
  `log()` writes one metric per line, so consecutive lines of one step are merged.
- NeMo-RL console: a `===== Step i/N =====` header per step (i restarts every epoch), then
  `📊 Training Results:` and `📊 Validation Results for `NAME` set:` blocks of `• name: value`
  bullets. The global step is the number of step headers seen so far.
"""

from __future__ import annotations

import re
from pathlib import Path

from dpodiag.errors import NoDataError
from dpodiag.io.source import read_text
from dpodiag.io.steplogs.table import RawLog

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|-?inf"
_MLX_LINE = re.compile(r"^\s*Iter (\d+):\s*(.*)$")
_MLX_FIELD = re.compile(rf"^([A-Za-z][A-Za-z/ ]*?)\s+({_NUMBER})\s*([A-Za-z%/]*)$")
_TORCHTUNE_LINE = re.compile(r"^Step (\d+) \| (.*)$")
_TORCHTUNE_FIELD = re.compile(rf"(\S+?):({_NUMBER})(?=\s|$)")
_NEMO_STEP = re.compile(r"^=+ Step \d+/\d+ =+\s*$")
_NEMO_TRAIN = re.compile(r"Training Results:\s*$")
_NEMO_VAL = re.compile(r"Validation Results(?: for `[^`]*` set)?:\s*$")
_NEMO_BULLET = re.compile(rf"^\s*•\s*(?:Validation\s+)?([A-Za-z_][\w/]*):\s*({_NUMBER})\s*$")


def sniff(path: Path, head: bytes) -> str | None:
    """Return the line format of a text log (mlx-lm, torchtune or NeMo-RL), or None."""
    text = head.decode("utf-8", errors="replace")
    if re.search(r"(?m)^\s*Iter \d+: (?:Train|Val) loss", text):
        return "mlx-lm-console"
    if re.search(r"(?m)^Step \d+ \| \S+:", text):
        return "torchtune-txt"
    if re.search(r"(?m)^=+ Step \d+/\d+ =+", text) and "Results" in text:
        return "nemo-rl-console"
    return None


def read(path: Path, fmt: str) -> RawLog:
    """Read a line-format log of format `fmt` into records in file order."""
    text = read_text(path)
    parse = {"mlx-lm-console": _mlx, "torchtune-txt": _torchtune, "nemo-rl-console": _nemo}[fmt]
    records, notes = parse(text.splitlines())
    if records and not text.endswith("\n"):
        _drop_cut_last(records, notes)
    if not records:
        raise NoDataError(path, f"no {fmt} records found in its {text.count(chr(10)) + 1} lines",
                          "pass the trainer's unedited console output")
    return RawLog(records=records, format=fmt, notes=notes)


def _drop_cut_last(records: list[dict[str, float]], notes: list[str]) -> None:
    # A file that ends mid-line (an excerpt) cuts its last record short: fewer fields than before.
    if len(records) > 1 and len(records[-1]) < max(len(record) for record in records[:-1]):
        records.pop()
        notes.append("the last record is cut off where the file ends and was skipped")


def _mlx(lines: list[str]) -> tuple[list[dict[str, float]], list[str]]:
    records = []
    for line in lines:
        match = _MLX_LINE.match(line)
        if not match:
            continue
        record = {"iter": float(match.group(1))}
        for part in match.group(2).split(","):
            field = _MLX_FIELD.match(part.strip())
            if field:
                record[_mlx_key(field.group(1), field.group(3))] = float(field.group(2))
        if len(record) > 1:
            records.append(record)
    return records, ["step is mlx-lm's iteration number"]


def _mlx_key(label: str, unit: str) -> str:
    # "Train loss" -> loss, "Val loss" -> val_loss, "It/sec" -> it_per_sec, "Peak mem" + GB.
    words = label.strip().lower().replace("/", " per ").split()
    if len(words) > 1 and words[0] == "train":
        words = words[1:]
    if unit and unit.lower() not in ("", "per"):
        words.append(unit.lower().replace("%", "percent"))
    return "_".join(words)


def _torchtune(lines: list[str]) -> tuple[list[dict[str, float]], list[str]]:
    records: list[dict[str, float]] = []
    for line in lines:
        match = _TORCHTUNE_LINE.match(line.strip())
        if not match:
            continue
        step = float(match.group(1))
        fields = {key: float(value) for key, value in _TORCHTUNE_FIELD.findall(match.group(2))}
        if records and records[-1]["step"] == step:
            records[-1].update(fields)
        elif fields:
            records.append({"step": step, **fields})
    return records, []


def _nemo(lines: list[str]) -> tuple[list[dict[str, float]], list[str]]:
    records: list[dict[str, float]] = []
    step = 0
    current: dict[str, float] | None = None
    prefix = ""
    for line in lines:
        stripped = line.strip()

        # A header starts the next global step; a results heading opens a block of bullets.
        if _NEMO_STEP.match(stripped):
            step += 1
            current = None
            continue
        if _NEMO_TRAIN.search(stripped) or _NEMO_VAL.search(stripped):
            prefix = "val/" if _NEMO_VAL.search(stripped) else ""
            current = {"step": float(step)}
            records.append(current)
            continue

        # Bullets belong to the open block; any other line closes it.
        bullet = _NEMO_BULLET.match(line)
        if current is not None and bullet:
            current[prefix + bullet.group(1)] = float(bullet.group(2))
        elif current is not None and stripped and "•" not in stripped:
            current = None
    records = [record for record in records if len(record) > 1]
    return records, ["step counts NeMo-RL step headers; validation before the first step is 0"]
