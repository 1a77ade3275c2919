"""TensorBoard event files (`events.out.tfevents.*`), read with the tensorboard package.

The optional dependency (`pip install 'dpodiag[tensorboard]'`) is imported only when such a
file is read. Its EventAccumulator runs with size_guidance 0 for scalars and tensors, which keeps
every point instead of the reservoir sample TensorBoard's UI uses. HF's TensorBoardCallback names
tags `train/<key>` and `eval/<key>` and stores the TrainingArguments as JSON in the text tag
`args/text_summary`, which is read as run metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from dpodiag.errors import InputError, NoDataError
from dpodiag.io.steplogs.sidecars import config_values, describe
from dpodiag.io.steplogs.table import RawLog

# TFRecord framing: an 8-byte little-endian length, a 4-byte CRC, then the payload. The first
# record of every event file is the file-version event, whose payload contains "brain.Event:".
_MAX_FIRST_RECORD = 1 << 20


def sniff(path: Path, head: bytes) -> str | None:
    """Return "tensorboard" for a file that starts with a TFRecord-framed file-version event."""
    if len(head) < 16:
        return None
    length = int.from_bytes(head[:8], "little")
    if 0 < length < _MAX_FIRST_RECORD and b"brain.Event:" in head[12:12 + length]:
        return "tensorboard"
    # A file named like an event file whose first length field fits in the file.
    if ".tfevents" in path.name and 0 < length and 16 + length <= path.stat().st_size:
        return "tensorboard"
    return None


def read(path: Path, fmt: str = "tensorboard") -> RawLog:
    """Read every scalar point of an event file into one record per step."""
    accumulator = _load(path)
    tags = accumulator.Tags()
    rows: list[tuple[str, int, float]] = []
    for tag in tags.get("scalars", []):
        rows += [(tag, event.step, event.value) for event in accumulator.Scalars(tag)]
    rows += _tensor_scalars(accumulator, tags.get("tensors", []))
    if not rows:
        raise NoDataError(path, "no scalar summaries in this event file",
                          "pass the event file that the trainer's TensorBoard callback wrote")

    # One row per step, one column per tag; a tag written twice at one step keeps its last value.
    points = pl.DataFrame(rows, schema={"tag": pl.Utf8, "step": pl.Int64, "value": pl.Float64},
                          orient="row")
    repeated = points.filter(pl.struct("tag", "step").is_duplicated())
    duplicates = repeated.height - repeated.unique(["tag", "step"]).height
    frame = points.pivot(on="tag", index="step", values="value", aggregate_function="last")
    frame = frame.sort("step").with_columns(pl.col("step").cast(pl.Float64))
    notes = [f"{len(set(points['tag']))} scalar tags, {points.height} points, no downsampling"]
    others = [p.name for p in path.parent.glob("*tfevents*") if p != path and p.is_file()]
    if others:
        notes.append(f"{len(others)} other event files in this folder were not read "
                     f"({', '.join(sorted(others)[:3])}); pass each one to read it")
    if duplicates:
        names = ", ".join(sorted(set(repeated.get_column("tag"))))
        notes.append(f"{duplicates} points repeat a (tag, step) pair ({names}); the last one "
                     "was remaining")
    cut = _cut_record_offset(path)
    if cut is not None:
        notes.append(f"byte {cut}: the last event record is cut off where the file ends (the "
                     "trainer was still writing it, or stopped); the records before it were read")
    meta, meta_notes, hints = _text_metadata(accumulator, tags.get("tensors", []))
    return RawLog(records=[], frame=frame, format="tensorboard", notes=notes + meta_notes,
                  meta=meta, hints=hints)


def _load(path: Path) -> Any:
    # Import lazily: tensorboard is an optional dependency.
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError:
        raise InputError(path, "is a TensorBoard event file, and reading it needs the optional "
                         "tensorboard package",
                         "install it with: pip install 'dpodiag[tensorboard]'") from None
    guidance = {event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
    accumulator = event_accumulator.EventAccumulator(str(path), size_guidance=guidance)
    try:
        accumulator.Reload()
    except Exception as error:  # noqa: BLE001 - the reader raises several undocumented types
        raise InputError(path, f"cannot be read as a TensorBoard event file ({error})",
                         "pass the event file as the trainer wrote it") from None
    return accumulator


def _cut_record_offset(path: Path) -> int | None:
    # Walk the TFRecord framing (length, length CRC, payload, payload CRC) without checking the
    # CRCs. Return the offset of a record that runs past the end of the file, or None.
    size = path.stat().st_size
    offset = 0
    with path.open("rb") as stream:
        while offset < size:
            stream.seek(offset)
            header = stream.read(8)
            end = offset + 12 + int.from_bytes(header, "little") + 4
            if len(header) < 8 or end > size:
                return offset
            offset = end
    return None


def _tensor_scalars(accumulator: Any, tensor_tags: list[str]) -> list[tuple[str, int, float]]:
    # TF2-style writers store scalars as rank-0 tensors under the "scalars" plugin.
    from tensorboard.util import tensor_util

    rows = []
    for tag in tensor_tags:
        if accumulator.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
            continue
        for event in accumulator.Tensors(tag):
            value = tensor_util.make_ndarray(event.tensor_proto)
            if value.size == 1:
                rows.append((tag, event.step, float(value.reshape(()))))
    return rows


def _text_metadata(accumulator: Any,
                   tensor_tags: list[str]) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    # HF stores TrainingArguments and the model config as JSON text.
    values: dict[str, Any] = {}
    notes: list[str] = []
    hints: dict[str, Any] = {}
    for tag in ("args/text_summary", "model_config/text_summary"):
        if tag not in tensor_tags:
            continue
        data = _json_text(accumulator.Tensors(tag)[-1].tensor_proto)
        if tag.startswith("args") and data:
            values, notes, hints = config_values(data)
            if values:
                notes.insert(0, f"metadata from the event file's {tag}: {describe(values)}")
        elif data:
            name = data.get("_name_or_path")
            if name:
                values.setdefault("policy_model", name)
            if data.get("transformers_version"):
                hints.setdefault("transformers_version", data["transformers_version"])
    return values, notes, hints


def _json_text(proto: Any) -> dict[str, Any] | None:
    try:
        data = json.loads(proto.string_val[0].decode("utf-8", errors="replace"))
    except (IndexError, ValueError):
        return None
    return data if isinstance(data, dict) else None
