"""Reader for unpaired (KTO-style) logs: one row per completion with a desirable flag."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from dpodiag.errors import InputError, NoDataError
from dpodiag.io.metadata import apply_metadata, read_parquet_meta
from dpodiag.io.pairs import canonical_split, pair_format, read_columns
from dpodiag.schema import Run, RunMeta

UNPAIRED_COLUMNS = {"step": pl.Int64, "split": pl.Utf8, "example_id": pl.Utf8, "epoch": pl.Float64,
                    "policy_logps": pl.Float64, "reference_logps": pl.Float64, "desirable": pl.Boolean,
                    "z0": pl.Float64, "length": pl.Float64, "loss": pl.Float64, "run": pl.Utf8}
UNPAIRED_ALIASES = {"policy_logps": ["logps", "policy_logp"], "reference_logps": ["ref_logps", "reference_logp"],
                    "desirable": ["label", "is_desirable"], "z0": ["kl", "kl_estimate"],
                    "step": ["global_step"], "example_id": ["id"]}
REQUIRED = ("step", "policy_logps", "reference_logps", "desirable")


def unpaired_mapping(names: list[str]) -> dict[str, str]:
    """Canonical unpaired column -> the input's name, by exact name then aliases (any case)."""
    by_lower = {name.lower(): name for name in names}
    mapping = {}
    for canonical in UNPAIRED_COLUMNS:
        for candidate in [canonical, *UNPAIRED_ALIASES.get(canonical, [])]:
            if candidate.lower() in by_lower:
                mapping[canonical] = by_lower[candidate.lower()]
                break
    return mapping


def looks_like_unpaired_log(path: Path) -> bool:
    """True when a table holds a step, per-completion log-probs and a desirable flag."""
    try:
        names, _ = read_columns(path, pair_format(path) or "parquet")
    except InputError:
        return False
    return all(column in unpaired_mapping(names) for column in REQUIRED)


def _read_table(path: Path, fmt: str, columns: list[str]) -> pl.DataFrame:
    try:
        if fmt == "parquet":
            return pl.read_parquet(path, columns=columns)
        if fmt == "csv":
            return pl.read_csv(path, columns=columns, infer_schema_length=0)
        if fmt == "arrow":
            return pl.read_ipc(path, columns=columns)
        return pl.read_ndjson(path).select(columns)
    except (OSError, pl.exceptions.PolarsError, ValueError) as exc:
        raise InputError(path, f"cannot read the {fmt} table ({str(exc).splitlines()[0][:200]})",
                         "check that the file is complete") from None


def _cast(path: Path, frame: pl.DataFrame, mapping: dict[str, str]) -> pl.DataFrame:
    """Cast to the canonical dtypes; a present value that does not parse is an error."""
    casts = []
    for name in frame.columns:
        dtype = UNPAIRED_COLUMNS[name]
        column = pl.col(name)
        if dtype == pl.Boolean and frame.schema[name] == pl.Utf8:
            lowered = column.str.strip_chars().str.to_lowercase()
            column = pl.when(lowered.is_in(["true", "1", "yes"])).then(True).when(
                lowered.is_in(["false", "0", "no"])).then(False).otherwise(None)
        elif dtype != pl.Utf8 and frame.schema[name] == pl.Utf8:
            column = column.str.strip_chars()
        casts.append(column.cast(dtype, strict=False).alias(name))
    cast = frame.select(casts)
    for name in frame.columns:
        bad = frame.get_column(name).is_not_null() & cast.get_column(name).is_null()
        if bad.any():
            row = int(bad.arg_max())
            raise InputError(path, f"column {mapping[name]!r}, row {row + 1}: cannot read "
                                   f"{str(frame.get_column(name)[row])[:40]!r} as {UNPAIRED_COLUMNS[name]}",
                             "fix the value or drop the row")
    return cast


def read_unpaired_log(path: Path, *, flags: dict | None = None, run_name: str | None = None) -> list[Run]:
    """Read an unpaired log into one Run (level "unpaired") per run name."""
    fmt = pair_format(path) or "parquet"
    names, key_value = read_columns(path, fmt)
    mapping = unpaired_mapping(names)
    raw = _read_table(path, fmt, list(mapping.values()))
    if raw.height == 0:
        raise NoDataError(path, "the table has no rows", "pass a log with at least one scored completion")
    frame = _cast(path, raw.rename({theirs: canonical for canonical, theirs in mapping.items()}), mapping)
    if "split" not in frame.columns:
        frame = frame.with_columns(pl.lit("train").alias("split"))
    # The split names of pair logs: validation and test names are "eval", others are kept.
    frame = frame.with_columns(canonical_split(pl.col("split").cast(pl.Utf8)).alias("split"))
    file_meta = read_parquet_meta(path, key_value) if fmt == "parquet" else {}
    name = run_name or path.name.split(".")[0]
    if "run" not in frame.columns:
        frame = frame.with_columns(pl.lit(name).alias("run"))
    runs = []
    for (run,), part in frame.group_by("run", maintain_order=True):
        meta = apply_metadata(RunMeta(), path, file_meta, flags)
        if meta.loss_type is None:
            meta.update({"loss_type": "kto"}, "inferred")
        runs.append(Run(name=str(run), source=str(path), level="unpaired", table=part, meta=meta,
                        format=fmt, dialect="trl-kto", column_mapping=dict(mapping)))
    return runs
