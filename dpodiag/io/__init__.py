"""Readers: one per source format, chosen by content and name, all producing canonical Runs."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from dpodiag.errors import InputError
from dpodiag.io.canonical import canonical_level, read_canonical_steps
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
    if path.suffix.lower() in (".parquet", ".pq") and canonical_level(path) == "steps":
        return read_canonical_steps(path, flags)
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
    shards = _pair_shards(path, options.get("column_map"))
    if shards:
        runs.extend(_load_shards(path, shards, **options))
    read_as_shards = set(shards)
    for child in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        if child.name.endswith(".dpodiag.json") or child in read_as_shards:
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


def _pair_shards(path: Path, column_map: dict[str, str] | None) -> list[Path]:
    """Return the parquet shards part-*.parquet directly inside `path` that hold pair columns."""
    return sorted(p for p in path.glob("part-*.parquet")
                  if p.is_file() and looks_like_pair_log(p, column_map))


def _load_shards(path: Path, shards: list[Path], *, column_map: dict[str, str] | None = None,
                 flags: dict | None = None, dialect: str | None = None) -> list[Run]:
    """Read the pair-log shards of one folder as one run named after the folder.

    A run column inside the shards still splits them into one Run per name.

    Raises:
        InputError: two shards carry different "dpodiag" parquet metadata.
    """
    from dpodiag.io.metadata import METADATA_KEY

    key = METADATA_KEY.encode()
    first_metadata = (pq.read_schema(shards[0]).metadata or {}).get(key)
    for shard in shards[1:]:
        if (pq.read_schema(shard).metadata or {}).get(key) != first_metadata:
            raise InputError(shard, f"its {METADATA_KEY!r} metadata differs from {shards[0].name}'s, so "
                             "the shards are not one run", "move the shards of each run to their own folder")
    runs = read_pair_log(path, column_map=column_map, flags=flags, run_name=path.name, shards=shards)
    for run in runs:
        run.notes.insert(0, f"read {len(shards)} shards {path.name}/part-*.parquet as one run")
    return runs


def _step_reader():
    """Return the step-log reader package, or None while it is not installed."""
    try:
        from dpodiag.io import steplogs
    except ImportError:
        return None
    return steplogs
