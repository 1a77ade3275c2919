"""CSV step logs: W&B history exports and per-evaluation CSVs from hand-written trainers.

W&B writes two kinds of CSV. A panel export has a `Step` column and `<run> - <key>` columns,
with `__MIN` and `__MAX` companions for smoothed panels. A full history export (`run.history()`
saved with pandas) has `_step`, `_runtime`, `_timestamp` and one column per logged key such as
`train/loss`. A hand-written trainer's CSV has any column names
(`train_loss`, `val_reward_margin`, `policy_chosen_logprobs`). The generic dialect maps them by
name, and a `column_map` given to the reader overrides the mapping.
"""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl

from dpodiag.dialects import STEP_KEYS, guess_canonical, split_key
from dpodiag.errors import InputError, NoDataError
from dpodiag.io.source import csv_separator, logical_suffix, ragged_csv_error, read_bytes
from dpodiag.io.steplogs.sidecars import glob_escape, run_prefix
from dpodiag.io.steplogs.table import RawLog, is_pair_record

SNIFF_ROWS = 200


def sniff(path: Path, head: bytes) -> str | None:
    """Return "wandb-history-csv" or "metrics-csv" for a CSV step log, else None."""
    if logical_suffix(path) not in (".csv", ".tsv"):
        return None
    try:
        frame = _parse(head[:head.rfind(b"\n") + 1] or head, path, n_rows=SNIFF_ROWS, strict=False)
    except (pl.exceptions.PolarsError, InputError):
        return None
    columns = frame.columns
    if is_pair_record(columns):
        return None
    if {"Step", "_step"} & set(columns) or any(" - " in c or "/" in c for c in columns):
        return "wandb-history-csv"
    step = next((c for c in columns if c in STEP_KEYS), None)
    if step is not None and frame.get_column(step).is_duplicated().any():
        return None
    known = [c for c in columns if guess_canonical(split_key(c)[1])]
    return "metrics-csv" if known else None


def read(path: Path, fmt: str, run_name: str | None = None) -> RawLog:
    """Read a CSV step log into a numeric frame, one row per logged step or evaluation."""
    frame = _parse(read_bytes(path), path)
    notes: list[str] = []
    if fmt == "wandb-history-csv":
        frame = _select_panel_run(frame, path, run_name, notes)
    frame, text_columns = _numeric(frame)
    if text_columns:
        notes.append(f"non-numeric columns not read: {', '.join(text_columns)}")
    if frame.width == 0 or frame.height == 0:
        raise NoDataError(path, "no numeric columns or no rows", "pass a CSV of logged metrics")
    if fmt == "metrics-csv":
        notes += _batch_record_notes(path)
    return RawLog(records=[], frame=frame, format=fmt, notes=notes)


def _parse(data: bytes, path: Path, n_rows: int | None = None, strict: bool = True) -> pl.DataFrame:
    # Every column as text first; numeric conversion happens per column afterwards. A row with
    # more fields than the header is an error that names its line, except when sniffing.
    separator = csv_separator(path)
    try:
        return pl.read_csv(io.BytesIO(data), separator=separator, infer_schema=False,
                           n_rows=n_rows, truncate_ragged_lines=not strict)
    except (pl.exceptions.PolarsError, OSError) as error:
        if strict and (ragged := ragged_csv_error(path, io.BytesIO(data), separator)):
            raise ragged from None
        # polars raises OSError for bytes that look gzip-compressed but are not.
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(path, f"cannot be parsed as CSV ({message})",
                         "pass a comma-separated file with a header row") from None


def _numeric(frame: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    # Keep columns whose non-empty cells all parse as numbers (nan and inf included).
    keep, text = [], []
    for name in frame.columns:
        if name in ("", "Unnamed: 0") or name.startswith("__index"):
            continue
        column = frame.get_column(name).str.strip_chars()
        column = column.replace("", None)
        numbers = column.cast(pl.Float64, strict=False)
        if numbers.null_count() == column.null_count():
            keep.append(numbers.alias(name))
        else:
            text.append(name)
    return pl.DataFrame(keep), text


def _select_panel_run(frame: pl.DataFrame, path: Path, run_name: str | None,
                      notes: list[str]) -> pl.DataFrame:
    # Panel exports name columns "<run> - <key>"; one run per file is read.
    panel = [c for c in frame.columns if " - " in c]
    if not panel:
        return frame
    bounds = [c for c in panel if c.endswith(("__MIN", "__MAX"))]
    if bounds:
        notes.append(f"{len(bounds)} __MIN/__MAX smoothing columns not read")
    runs = list(dict.fromkeys(c.split(" - ", 1)[0] for c in panel))
    if len(runs) > 1 and run_name not in runs:
        raise InputError(path, f"contains {len(runs)} W&B runs ({', '.join(runs[:6])})",
                         "export one run per file from W&B, or read one run with "
                         "dpodiag.load(path, run_name=NAME)")
    run = run_name if len(runs) > 1 else runs[0]
    keep = [c for c in frame.columns if " - " not in c]
    renamed = {c: c.split(" - ", 1)[1] for c in panel
               if c.startswith(f"{run} - ") and c not in bounds}
    notes.append(f"W&B panel export: columns of run {run!r}")
    return frame.select(*keep, *renamed).rename(renamed)


def _batch_record_notes(path: Path) -> list[str]:
    # Hand-written trainers write per-batch records beside the per-evaluation CSV.
    prefix = glob_escape(run_prefix(path))
    found = sorted(path.parent.glob(f"{prefix}*batch_records*.json"))
    return [f"per-batch records beside this file: {p.name} (read it on its own)" for p in found]
