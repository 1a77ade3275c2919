"""The HTML report: figures from aggregates, the page, its assets."""

from __future__ import annotations

from pathlib import Path

from dpodiag.outputs import write_atomic


def write_report(diagnosis, path: str | Path, *, force: bool = False, title: str | None = None) -> Path:
    """Render `diagnosis` as one self-contained HTML file at `path` (atomic; no overwrite without force)."""
    from dpodiag.report.page import render_html

    return write_atomic(path, render_html(diagnosis, title=title).encode("utf-8"), force=force)
