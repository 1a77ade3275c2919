"""The HTML report: figures from aggregates, the page, its assets."""

from __future__ import annotations

from pathlib import Path

from dpodiag.outputs import write_atomic

# Pair-table columns that the report reads (charts, drill-down, texts). `dpodiag report` keeps
# only these once a run's checks have run; tests/report compares the page with the full table.
PAIR_COLUMNS_READ = ("step", "split", "example_id", "margin", "probability", "loss_recomputed", "loss",
                     "chosen_length", "rejected_length", "preference_strength", "prompt", "chosen",
                     "rejected")


def write_report(diagnosis, path: str | Path, *, force: bool = False, title: str | None = None) -> Path:
    """Render `diagnosis` as one self-contained HTML file at `path` (atomic; no overwrite without force)."""
    from dpodiag.report.page import render_html

    return write_atomic(path, render_html(diagnosis, title=title).encode("utf-8"), force=force)
