"""Writing runs as one canonical parquet table that dpodiag reads back unchanged."""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from dpodiag.errors import UsageError
from dpodiag.outputs import write_atomic
from dpodiag.schema import Run

FIELDS = ("beta", "loss_type", "label_smoothing", "simpo_gamma", "logps_normalisation",
          "framework", "policy_model", "reference_model")


def canonical_metadata(run: Run) -> dict:
    """The run's metadata as stored under the parquet key "dpodiag"."""
    # A field without a source is RunMeta's default (label_smoothing 0.0), which no input stated.
    values = {name: getattr(run.meta, name) for name in FIELDS
              if getattr(run.meta, name) is not None and name in run.meta.sources}
    values.update(level=run.level, dialect=run.dialect, source=run.source,
                  sources={k: v for k, v in run.meta.sources.items() if k in FIELDS},
                  trainer_config=run.meta.trainer_config, notes=run.notes,
                  step_source=run.step_source)
    return values


def write_canonical(runs: list[Run], path: str | Path, *, force: bool = False) -> Path:
    """Write `runs` (one evidence level) as one parquet table; every run keeps its `run` column.

    Raises:
        UsageError: the runs mix pair and step logs, which have different columns.
    """
    levels = {run.level for run in runs}
    if len(levels) > 1:
        raise UsageError("the input mixes pair and step logs; convert them one at a time")
    table = pl.concat([run.table for run in runs], how="diagonal_relaxed").to_arrow()
    # The first run's metadata is the file's, for readers that expect one run per file. Each
    # run's own metadata is stored under "runs", by run name.
    meta = canonical_metadata(runs[0])
    if len(runs) > 1:
        # Stacking fills a column that one run lacks with nulls, so "columns" lists each run's own.
        meta["runs"] = {run.name: {**canonical_metadata(run), "columns": run.table.columns}
                        for run in runs}
    table = table.replace_schema_metadata({"dpodiag": json.dumps(meta)})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return write_atomic(path, buffer.getvalue(), force=force)
