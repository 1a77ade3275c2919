"""The pipeline behind every command: read runs, recompute, aggregate, check."""

from __future__ import annotations

import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dpodiag import __version__
from dpodiag.checks import Finding, RunData, run_checks
from dpodiag.compute.device import cpu_threads, resolve_device
from dpodiag.compute.infer import infer_pair_meta, infer_step_meta
from dpodiag.compute.moments import step_tables
from dpodiag.compute.recompute import recompute, recompute_to_files
from dpodiag.errors import UsageError
from dpodiag.io import load  # noqa: F401  (part of the pipeline's API)
from dpodiag.schema import Run


@dataclass
class Diagnosis:
    """Every run with its derived tables, and every finding, in run order."""

    runs: list[RunData]
    findings: list[Finding]

    def worst(self) -> str | None:
        for severity in ("error", "warning", "info"):
            if any(f.severity == severity for f in self.findings):
                return severity
        return None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON document of `dpodiag check --format json`."""
        return {"dpodiag_version": __version__,
                "runs": [run_summary(data.run) for data in self.runs],
                "findings": [f.to_dict() for f in self.findings]}


def run_summary(run: Run) -> dict[str, Any]:
    first, last = run.steps
    return {"run": run.name, "source": run.source, "level": run.level, "rows": run.rows,
            "splits": run.splits, "first_step": first, "last_step": last,
            "beta": run.meta.beta, "beta_source": run.meta.source_of("beta"),
            "loss_type": run.meta.loss_type, "loss_type_source": run.meta.source_of("loss_type"),
            "notes": list(run.notes)}


def derive_step_margins(run: Run):
    """Return the step table with rewards_margins = rewards_chosen - rewards_rejected added.

    Some trainers log the two rewards but not their margin; the mean of the differences is the
    difference of the means, so the margin follows exactly.
    """
    table = run.table
    if "rewards_margins" in table.columns or not {"rewards_chosen", "rewards_rejected"} <= set(table.columns):
        return table
    run.notes.append("rewards_margins derived as rewards_chosen - rewards_rejected")
    return table.with_columns((pl.col("rewards_chosen") - pl.col("rewards_rejected")).alias("rewards_margins"))


def analyse(run: Run, device: str = "auto") -> RunData:
    """Recompute a pair log and aggregate it per step; a step log passes through unchanged."""
    if run.level == "unpaired":
        from dpodiag.compute.infer import apply_defaults
        from dpodiag.compute.kto import unpaired_step_aggregates

        apply_defaults(run)
        return RunData(run=run, steps=unpaired_step_aggregates(run.table, run.meta.beta,
                                                                resolve_device(device)))
    if run.level == "steps":
        infer_step_meta(run)
        return RunData(run=run, steps=derive_step_margins(run))
    run.materialise()
    infer_pair_meta(run)
    if run.streaming:
        return analyse_streamed(run, device)
    pairs = recompute(run, resolve_device(device))
    steps, moments = step_tables(pairs)
    return RunData(run=run, steps=steps, pairs=pairs, moments=moments)


def analyse_streamed(run: Run, device: str = "auto") -> RunData:
    """Recompute a streamed pair log into a temporary folder and aggregate it per step.

    The folder, in the system's temporary directory ($TMPDIR), holds the recomputed pair table
    as parquet files, about the size of the log; it is removed with the RunData or at exit.
    NOTE: a process killed before it exits (SIGKILL, or an allocation failure that aborts polars)
    leaves the folder, named dpodiag-*, behind.
    """
    scratch = tempfile.TemporaryDirectory(prefix="dpodiag-")
    pairs = recompute_to_files(run, resolve_device(device), Path(scratch.name) / "pairs")
    steps, moments = step_tables(pairs)
    return RunData(run=run, steps=steps, pairs=pairs, moments=moments, scratch=scratch)


def diagnose(runs: list[Run], device: str = "auto", keep_pairs: bool = True,
             keep_columns: Collection[str] | None = None) -> Diagnosis:
    """Analyse and check every run, one run at a time.

    With `keep_pairs` False, each run's pair table and in-memory table are released once its
    checks have run (see `RunData.release_pairs`), so memory contains one run's derived columns
    at a time. The Diagnosis then carries the step tables, summaries and findings only, which is
    all that `dpodiag check` prints. With `keep_columns`, each in-memory pair table keeps only
    those columns after the checks, and the run's table is released (see
    `RunData.narrow_pairs`).
    """
    if not runs:
        raise UsageError("no run to diagnose")
    findings: list[Finding] = []
    analysed: list[RunData] = []
    with cpu_threads():
        for run in runs:
            data = analyse(run, device)
            findings += run_checks(data)
            # Shared by the checks only; one row per example, so large for a large log.
            data.cache.pop("example_summary", None)
            if not keep_pairs:
                data.release_pairs()
            elif keep_columns is not None:
                data.narrow_pairs(keep_columns)
            analysed.append(data)
    return Diagnosis(runs=analysed, findings=findings)
