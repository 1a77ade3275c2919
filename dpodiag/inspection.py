"""A description of how a run was read, for `dpodiag inspect` and the report's appendix."""

from __future__ import annotations

from typing import Any

import polars as pl

from dpodiag.phrases import counted, step_range
from dpodiag.schema import Run

META_FIELDS = ("beta", "loss_type", "label_smoothing", "simpo_gamma", "logps_normalisation",
               "framework", "policy_model", "reference_model")


def describe_run(run: Run) -> dict[str, Any]:
    """Format, dialect, record counts per split, column mapping, metadata and notes of `run`."""
    from dpodiag.dialects import DIALECTS

    first, last = run.steps
    counts = (run.table.lazy().group_by("split").agg(pl.len().alias("n"), pl.col("step").n_unique().alias("steps"))
              .collect(engine="streaming" if run.streaming else "auto"))
    dialect = DIALECTS.get(run.dialect or "")
    return {
        "run": run.name, "source": run.source, "format": run.format, "level": run.level,
        "dialect": run.dialect, "dialect_description": dialect.description if dialect else None,
        "rows": run.rows, "first_step": first, "last_step": last,
        "splits": {row["split"]: {"rows": row["n"], "steps": row["steps"]}
                   for row in counts.sort("split").iter_rows(named=True)},
        "columns": run.columns,
        "column_mapping": {k: v for k, v in run.column_mapping.items() if k != v},
        "metadata": {name: {"value": getattr(run.meta, name), "source": run.meta.source_of(name)}
                     for name in META_FIELDS
                     if getattr(run.meta, name) is not None and run.meta.source_of(name) is not None},
        "trainer_config": run.meta.trainer_config,
        "notes": run.notes,
    }


def describe_text(described: dict[str, Any]) -> str:
    """Render the description as indented text lines."""
    lines = [f"{described['run']}",
             f"  source:   {described['source']}",
             f"  format:   {described['format']} ({described['level']} log)"]
    if described["dialect"]:
        extra = f" - {described['dialect_description']}" if described["dialect_description"] else ""
        lines.append(f"  dialect:  {described['dialect']}{extra}")
    lines.append(f"  rows:     {described['rows']} "
                 f"({step_range(described['first_step'], described['last_step'])})")
    for split, counts in described["splits"].items():
        lines.append(f"    {split}: {counted(counts['rows'], 'row')} at "
                     f"{counted(counts['steps'], 'step')}")
    lines.append(f"  columns:  {', '.join(described['columns'])}")
    for canonical, theirs in described["column_mapping"].items():
        lines.append(f"    {canonical} <- {theirs}")
    for name, entry in described["metadata"].items():
        lines.append(f"  {name}: {entry['value']} ({entry['source']})")
    if described["trainer_config"]:
        settings = ", ".join(f"{k}={v}" for k, v in described["trainer_config"].items())
        lines.append(f"  trainer settings: {settings}")
    for note in described["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines) + "\n"
