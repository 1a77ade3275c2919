"""Readers: one per source format, chosen by content and name, all producing canonical Runs."""

from __future__ import annotations

from pathlib import Path

from dpodiag.errors import InputError
from dpodiag.io.pairs import looks_like_pair_log, pair_format, read_pair_log
from dpodiag.schema import Run


def load_runs(path: str | Path, *, column_map: dict[str, str] | None = None,
              flags: dict | None = None, dialect: str | None = None,
              run_name: str | None = None) -> list[Run]:
    """Read every run in `path` (a file or a folder) into canonical Runs.

    Raises:
        InputError: the path is missing, unreadable or in no supported format.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder", "check the path")
    if path.is_dir():
        return _load_folder(path, column_map=column_map, flags=flags, dialect=dialect)
    step_reader = _step_reader()
    if pair_format(path) and (looks_like_pair_log(path, column_map) or step_reader is None
                              or not step_reader.sniff_step_log(path)):
        return read_pair_log(path, column_map=column_map, flags=flags, run_name=run_name)
    if step_reader is not None and step_reader.sniff_step_log(path):
        run = step_reader.read_step_log(path, dialect=dialect, run_name=run_name, column_map=column_map)
        from dpodiag.io.metadata import apply_metadata
        apply_metadata(run.meta, path, {}, flags)
        return [run]
    raise InputError(path, "not a supported log format",
                     "pass a pair log (.parquet, .csv, .jsonl) or a trainer step log; "
                     "`dpodiag inspect` lists what is supported")


def _load_folder(path: Path, **options) -> list[Run]:
    """Read every supported log directly inside a folder; a trainer's run folder (W&B run,
    checkpoint, output_dir) with no log at its top is read as one run by the step reader."""
    runs: list[Run] = []
    step_reader = _step_reader()
    for child in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        if child.name.endswith(".dpodiag.json"):
            continue
        step_format = step_reader.sniff_step_log(child) if step_reader is not None else None
        if step_format in getattr(step_reader, "REJECTED_FORMATS", ()):
            continue  # configs, summaries and binaries beside the logs
        if step_format or looks_like_pair_log(child, options.get("column_map")):
            runs.extend(load_runs(child, **options))
    if not runs and step_reader is not None:
        run = step_reader.read_step_log(path, dialect=options.get("dialect"),
                                        column_map=options.get("column_map"))
        from dpodiag.io.metadata import apply_metadata
        apply_metadata(run.meta, path, {}, options.get("flags"))
        runs.append(run)
    if not runs:
        raise InputError(path, "the folder holds no supported log", "pass a folder with .parquet, "
                         ".csv, .jsonl or trainer log files, or pass the files themselves")
    return runs


def _step_reader():
    """Return the step-log reader package, or None while it is not installed."""
    try:
        from dpodiag.io import steplogs
    except ImportError:
        return None
    return steplogs
