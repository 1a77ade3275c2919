"""Reader for the canonical step tables that `dpodiag convert` writes."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from dpodiag.errors import InputError
from dpodiag.io.metadata import apply_metadata, own_columns, run_entry, validate_meta
from dpodiag.schema import Run, RunMeta


def canonical_level(path: Path) -> str | None:
    """The level ("pairs" or "steps") a parquet file written by dpodiag declares, else None."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(b"dpodiag")
        return json.loads(raw).get("level") if raw else None
    except (OSError, ValueError, AttributeError, pa.ArrowException):
        return None


def read_canonical_steps(path: Path, flags: dict | None = None) -> list[Run]:
    """Read a canonical step table: one Run per value of its `run` column."""
    stored = json.loads(pq.read_schema(path).metadata[b"dpodiag"])
    try:
        table = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InputError(path, f"cannot read the step table ({exc})", "check that the file is complete") from None
    missing = [c for c in ("run", "split", "step") if c not in table.columns]
    if missing:
        raise InputError(path, f"missing column {missing[0]!r} in a canonical step table",
                         "write it again with dpodiag convert")
    runs = []
    file_stored = stored
    for (name,), part in table.group_by("run", maintain_order=True):
        stored = run_entry(file_stored, str(name))
        part = own_columns(part, file_stored, str(name))
        meta = RunMeta()
        meta.update(validate_meta(stored, str(path), InputError), "metadata")
        for field, source in (stored.get("sources") or {}).items():
            if field in meta.sources:
                meta.sources[field] = source
        meta.trainer_config = dict(stored.get("trainer_config") or {})
        apply_metadata(meta, path, {}, flags)
        notes = [f"converted by dpodiag from {stored.get('source')}", *(stored.get("notes") or [])]
        runs.append(Run(name=str(name), source=str(path), level="steps", table=part, meta=meta,
                        format="canonical-steps", dialect=stored.get("dialect"), notes=notes,
                        step_source=stored.get("step_source", "logged")))
    return runs
