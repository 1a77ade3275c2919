"""Reader for pair logs: parquet, CSV and JSONL tables with one row per pair per step."""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from dpodiag.errors import InputError, NoDataError
from dpodiag.io.metadata import apply_metadata, read_parquet_meta
from dpodiag.io.source import logical_suffix, table_error, table_source
from dpodiag.schema import PAIR_ALIASES, PAIR_COLUMNS, Run, RunMeta

PAIR_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv",
                 ".jsonl": "jsonl", ".ndjson": "jsonl", ".arrow": "arrow", ".feather": "arrow"}
EVAL_SPLIT_NAMES = {"eval", "evaluation", "validation", "valid", "val", "dev", "test"}


def pair_format(path: Path) -> str | None:
    """Return the table format of `path` from its suffix (ignoring `.gz`), or None when it is not a table."""
    return PAIR_SUFFIXES.get(logical_suffix(path))


def read_columns(path: Path, fmt: str, source: Path | io.BytesIO | None = None) -> tuple[list[str], dict]:
    """Return the column names of the table and its parquet key-value metadata.

    `source` is what to read in place of `path` (see `dpodiag.io.source.table_source`).
    """
    source = table_source(path, fmt) if source is None else source
    if isinstance(source, io.BytesIO):
        source.seek(0)
    try:
        if fmt == "parquet":
            schema = pq.read_schema(source)
            return schema.names, dict(schema.metadata or {})
        if fmt == "arrow":
            return list(pl.read_ipc_schema(source)), {}
        if fmt == "csv":
            separator = "\t" if logical_suffix(path) == ".tsv" else ","
            return pl.scan_csv(source, separator=separator, infer_schema_length=0).collect_schema().names(), {}
        return pl.scan_ndjson(source, infer_schema_length=1000).collect_schema().names(), {}
    except (OSError, pl.exceptions.PolarsError, ValueError) as exc:
        raise table_error(path, fmt, exc) from None


def map_columns(path: Path, names: list[str], overrides: dict[str, str] | None) -> dict[str, str]:
    """Map canonical column names to the input's names: exact, then overrides, then aliases."""
    by_lower = {name.lower(): name for name in names}
    mapping: dict[str, str] = {}
    for canonical, their in (overrides or {}).items():
        if canonical not in PAIR_COLUMNS:
            raise InputError(path, f"--column names unknown canonical column {canonical!r}",
                             f"use one of {', '.join(PAIR_COLUMNS)}")
        if their not in names:
            raise InputError(path, f"column {their!r} given for {canonical} is not in the file",
                             f"the file has: {', '.join(names[:30])}")
        mapping[canonical] = their
    for canonical in PAIR_COLUMNS:
        if canonical in mapping:
            continue
        for candidate in [canonical, *PAIR_ALIASES.get(canonical, [])]:
            if candidate.lower() in by_lower and by_lower[candidate.lower()] not in mapping.values():
                mapping[canonical] = by_lower[candidate.lower()]
                break
    return mapping


def looks_like_pair_log(path: Path, column_map: dict[str, str] | None = None) -> bool:
    """True when a table's columns hold a step and per-pair log-probs or log-ratios."""
    try:
        names, _ = read_columns(path, pair_format(path) or "parquet")
        check_required(path, map_columns(path, names, column_map))
    except InputError:
        return False
    return True


def check_required(path: Path, mapping: dict[str, str]) -> None:
    """Raise when neither the policy log-probs nor the log-ratios, or no step, are present."""
    if "step" not in mapping:
        raise InputError(path, "missing column 'step'",
                         "add the optimizer step per row or map it with --column step=NAME")
    has_policy = {"policy_chosen_logps", "policy_rejected_logps"} <= mapping.keys()
    has_ratios = {"chosen_logratio", "rejected_logratio"} <= mapping.keys()
    if not has_policy and not has_ratios:
        missing = [c for c in ("policy_chosen_logps", "policy_rejected_logps") if c not in mapping]
        raise InputError(path, f"missing column {missing[0]!r} (and no chosen_logratio/rejected_logratio)",
                         "add the policy log-probs or the log-ratios, or map them with --column")


def scan_table(path: Path | list[Path] | io.BytesIO, fmt: str, mapping: dict[str, str],
               separator: str = ",") -> pl.LazyFrame:
    """Lazily scan only the mapped columns, renamed to their canonical names.

    A list of parquet files is scanned as one table; a column missing from some files is null there.
    `separator` is the CSV field separator.
    """
    columns = list(mapping.values())
    if isinstance(path, io.BytesIO):
        path.seek(0)
    if fmt == "parquet" and isinstance(path, list):
        frame = pl.scan_parquet(path, missing_columns="insert")
    elif fmt == "parquet":
        frame = pl.scan_parquet(path)
    elif fmt == "arrow":
        frame = pl.scan_ipc(path)
    elif fmt == "csv":
        frame = pl.scan_csv(path, separator=separator, infer_schema_length=0)
    else:
        frame = pl.scan_ndjson(path, infer_schema_length=None)
    return frame.select(columns).rename({their: canonical for canonical, their in mapping.items()})


def cast_columns(path: Path, frame: pl.DataFrame, mapping: dict[str, str]) -> pl.DataFrame:
    """Cast every column to its canonical dtype; a value that does not parse is an error."""
    casts = []
    for name in frame.columns:
        dtype = PAIR_COLUMNS[name]
        if dtype == pl.Utf8:
            casts.append(pl.col(name).cast(pl.Utf8))
        elif frame.schema[name] == pl.Utf8:
            casts.append(pl.col(name).str.strip_chars().cast(dtype, strict=False))
        else:
            casts.append(pl.col(name).cast(dtype, strict=False))
    cast = frame.select(casts)

    # A value that was present but became null did not parse as a number.
    for name in frame.columns:
        if PAIR_COLUMNS[name] == pl.Utf8:
            continue
        bad = frame.get_column(name).is_not_null() & cast.get_column(name).is_null()
        if bad.any():
            row = int(bad.arg_max())
            value = frame.get_column(name)[row]
            expected = "an integer that fits in 64 bits" if PAIR_COLUMNS[name] == pl.Int64 else "a number"
            raise InputError(path, f"column {mapping[name]!r}, row {row + 1}: expected {expected}, "
                                   f"got {str(value)[:40]!r}", "fix the value or drop the row")
    return cast


def normalise_splits(frame: pl.DataFrame, notes: list[str]) -> pl.DataFrame:
    """Default the split to "train" and map validation/test names onto "eval"."""
    if "split" not in frame.columns:
        return frame.with_columns(pl.lit("train").alias("split"))
    lowered = pl.col("split").str.strip_chars().str.to_lowercase()
    renamed = frame.with_columns(
        pl.when(lowered.is_in(list(EVAL_SPLIT_NAMES))).then(pl.lit("eval"))
        .when(lowered.is_null() | (lowered == "") | (lowered == "training")).then(pl.lit("train"))
        .otherwise(lowered).alias("split"))
    others = sorted(set(renamed.get_column("split").unique().to_list()) - {"train", "eval"})
    if others:
        notes.append(f"split values {others} kept as they are (only train and eval are known)")
    return renamed


def read_pair_log(path: Path, *, column_map: dict[str, str] | None = None,
                  flags: dict | None = None, run_name: str | None = None,
                  shards: list[Path] | None = None) -> list[Run]:
    """Read a pair log into one Run per run name found in it.

    `shards` are parquet files of one run read as one table in place of `path`, which is then
    their folder. The first shard's columns and metadata apply to all of them.

    Raises:
        InputError: the file cannot be read, or a required column is missing or invalid.
        NoDataError: the table has no rows.
    """
    first = shards[0] if shards else path
    fmt = pair_format(first) or "parquet"
    notes: list[str] = []
    source = table_source(first, fmt, notes)
    names, key_value = read_columns(first, fmt, source)
    mapping = map_columns(path, names, column_map)
    check_required(path, mapping)
    unmapped = [name for name in names if name not in mapping.values()]
    if unmapped:
        listed = ", ".join(unmapped[:20]) + (f" and {len(unmapped) - 20} more" if len(unmapped) > 20 else "")
        notes.append(f"columns not read (no canonical meaning; map one with --column): {listed}")

    # Read the mapped columns and give them their canonical types.
    separator = "\t" if logical_suffix(first) == ".tsv" else ","
    try:
        raw = scan_table(shards or source, fmt, mapping, separator).collect()
    except (OSError, pl.exceptions.PolarsError, ValueError) as exc:
        raise table_error(path, fmt, exc) from None
    if raw.height == 0:
        raise NoDataError(path, "the table has no rows", "pass a log with at least one scored pair")
    frame = cast_columns(path, raw, mapping)
    frame = normalise_splits(frame, notes)
    null_steps = frame.get_column("step").null_count()
    if null_steps:
        raise InputError(path, f"column {mapping['step']!r}: {null_steps} rows have no step",
                         "give every row its optimizer step")

    # One Run per run name; the file's stem names a file with a single run.
    file_meta = read_parquet_meta(first, key_value) if fmt == "parquet" else {}
    default_name = run_name or _stem(path)
    if "run" not in frame.columns:
        frame = frame.with_columns(pl.lit(default_name).alias("run"))
    frame = frame.with_columns(pl.col("run").fill_null(default_name))
    runs = []
    for (name,), part in frame.sort("run").group_by("run", maintain_order=True):
        meta = apply_metadata(RunMeta(), path, file_meta, flags)
        runs.append(Run(name=str(name), source=str(path), level="pairs", table=part,
                        meta=meta, format=fmt, column_mapping=dict(mapping), notes=list(notes)))
    return runs


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".zst"):
        name = name.removesuffix(suffix)
    return name.rsplit(".", 1)[0] if "." in name else name
