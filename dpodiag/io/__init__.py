"""Readers: one per source format, chosen by content and name, all producing canonical Runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from dpodiag.errors import DpodiagError, InputError, NoDataError, UsageError
from dpodiag.phrases import counted
from dpodiag.io.canonical import canonical_level, read_canonical_steps
from dpodiag.io.pairs import (
    check_required, looks_like_pair_log, map_columns, pair_format, read_columns, read_pair_log,
)
from dpodiag.io.unpaired import looks_like_unpaired_log, read_unpaired_log
from dpodiag.io.source import gzip_is_cut, logical_suffix, read_head, reject_other_separator, reject_utf16
from dpodiag.schema import Run

# Files that wandb writes about itself beside its run folders.
WANDB_INTERNAL_LOGS = frozenset({"debug.log", "debug-internal.log", "debug-core.log"})
# Bytes read from the start of a file to check that it is readable, not empty and not UTF-16.
HEAD_BYTES = 4096
# The folder inside a trainer's output_dir where dpodiag.integrations.trl.record_pairs writes.
RECORDER_FOLDER = "dpodiag-pairs"


def load(paths: list[str | Path] | str | Path, **options) -> list[Run]:
    """Read every run in `paths` with the options of `load_runs`; run names are made unique by
    suffixing -2, -3, ..."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    runs: list[Run] = []
    for path in paths:
        runs.extend(load_runs(path, **options))
    check_column_map_used(paths, runs, options.get("column_map"))
    seen: dict[str, int] = {}
    sources: dict[str, str] = {}
    for run in runs:
        count = seen.get(run.name, 0) + 1
        seen[run.name] = count
        if count > 1:
            original = run.name
            run.name = f"{original}-{count}"
            run.table = run.table.with_columns(pl.lit(run.name).alias("run"))
            same = " (the same file was passed twice)" if run.source == sources[original] else ""
            run.notes.append(f"renamed from {original}, because an earlier run has that name{same}")
        else:
            sources[run.name] = run.source
    return runs


def check_column_map_used(paths: list[str | Path], runs: list[Run], column_map: dict[str, str] | None) -> None:
    """Raise when a `column_map` entry (--column CANONICAL=THEIRS) mapped no column of any run.

    One --column applies to every input of a command. So the readers skip an entry whose column
    an input lacks when that input has the canonical column under a known name, or is a log of
    the other kind. An entry that no input used is a mistake in the name.
    """
    for canonical, theirs in (column_map or {}).items():
        if any(run.column_mapping.get(canonical) == theirs for run in runs):
            continue
        if len(paths) == 1 and Path(paths[0]).is_file():
            path = Path(paths[0])
            fmt = pair_format(path)
            names = read_columns(path, fmt)[0] if fmt else []
            fix = f"the file has: {', '.join(names[:30])}" if names else "check the column name"
            raise InputError(path, f"column {theirs!r} given for {canonical} is not in the file", fix)
        if len(paths) == 1:
            raise InputError(paths[0], f"column {theirs!r} given for {canonical} is in none of the "
                             "folder's logs", "check the column name")
        raise UsageError(f"--column {canonical}={theirs}: none of the {len(paths)} inputs has a "
                         f"column {theirs!r}; check the name")


def load_runs(path: str | Path, *, column_map: dict[str, str] | None = None,
              flags: dict | None = None, dialect: str | None = None,
              run_name: str | None = None, streaming: bool | None = None,
              defer: bool = False) -> list[Run]:
    """Read every run in `path` (a file or a folder) into canonical Runs.

    `streaming` applies to pair logs: True keeps their tables as LazyFrames over the file, False
    reads them into memory, None decides by size (see `dpodiag.io.budget`). `defer` leaves the
    in-memory reads of parquet and Arrow pair logs to `Run.materialise` (see `read_pair_log`).

    Raises:
        InputError: the path is missing, unreadable or in no supported format.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder", "check the path")
    if path.is_dir():
        return _load_folder(path, column_map=column_map, flags=flags, dialect=dialect,
                            streaming=streaming, defer=defer)
    head = _check_file(path)
    runs = _load_file(path, head, column_map=column_map, flags=flags, dialect=dialect,
                      run_name=run_name, streaming=streaming, defer=defer)
    if dialect is not None:
        for run in runs:
            if run.level != "steps":
                run.notes.append(f"--dialect {dialect} was not applied: it names how a trainer's "
                                 "step log is written, and this is a pair log")
    if gzip_is_cut(path):
        for run in runs:
            run.notes.append("the gzip stream ends before its end marker (the log was still "
                             "being written, or its writer stopped); the part before the cut "
                             "was read")
    return runs


def _load_file(path: Path, head: bytes, *, column_map: dict[str, str] | None,
               flags: dict | None, dialect: str | None, run_name: str | None,
               streaming: bool | None = None, defer: bool = False) -> list[Run]:
    """Read one file with the reader its name and content select."""
    if path.suffix.lower() in (".parquet", ".pq") and canonical_level(path) == "steps":
        return read_canonical_steps(path, flags)
    pair_columns = bool(pair_format(path)) and looks_like_pair_log(path, column_map)
    if pair_format(path) and not pair_columns and looks_like_unpaired_log(path):
        return read_unpaired_log(path, flags=flags, run_name=run_name)
    # The step reader is imported only when the file is not plainly a pair log (it costs ~0.1 s).
    step_reader = None if pair_columns else _step_reader()
    if pair_format(path) and (pair_columns or step_reader is None or not step_reader.sniff_step_log(path)):
        return read_pair_log(path, column_map=column_map, flags=flags, run_name=run_name,
                             streaming=streaming, defer=defer)
    if not pair_format(path):
        _reject_pair_records(path, head, column_map)
    # A file that no sniffer recognises but whose name is a step-log name (train.log,
    # trainer_state.json) goes to the step reader too, whose error names what is missing.
    named_as_log = logical_suffix(path) in getattr(step_reader, "FALLBACK_BY_SUFFIX", {})
    if step_reader is not None and (step_reader.sniff_step_log(path)
                                    or (named_as_log and b"\0" not in head)):
        run = step_reader.read_step_log(path, dialect=dialect, run_name=run_name, column_map=column_map)
        from dpodiag.io.metadata import apply_metadata
        apply_metadata(run.meta, path, {}, flags)
        return [run]
    kind = "is a binary file in no supported format" if b"\0" in head else "is in no supported format"
    raise InputError(path, kind, "pass a pair log (.parquet, .csv, .jsonl, also gzip-compressed) "
                     "or a trainer step log (trainer_state.json, console output, "
                     "trainer_log.jsonl, TensorBoard events, a W&B run file or CSV export)")


def _reject_pair_records(path: Path, head: bytes, column_map: dict[str, str] | None) -> None:
    """Raise when a file that is not named as a table contains per-pair records in JSON.

    Per-pair rows read as a console log would lose every row with a null field, and a JSON
    array of them is not a trainer log, so both are reported with the name they need.
    """
    text = head.decode("utf-8", errors="replace").lstrip()
    first_line = text.split("\n", 1)[0].strip()
    if first_line.startswith("{"):
        kind, fix = "JSON Lines", "rename it to .jsonl (or .jsonl.gz) so it is read as a pair log"
        record = first_line
    elif text.startswith("[") and logical_suffix(path) == ".json":
        kind = "a JSON array"
        fix = ("write it as JSON Lines (.jsonl) or parquet, e.g. "
               "polars.read_json(path).write_ndjson('pairs.jsonl')")
        start = text.find("{")
        end = text.find("}", start)
        record = text[start:end + 1] if start >= 0 and end > start else ""
    else:
        return
    try:
        names = list(json.loads(record))
        check_required(path, map_columns(path, names, column_map))
    except (ValueError, TypeError, InputError):
        return
    raise InputError(path, f"contains per-pair records as {kind} (columns {', '.join(names[:6])}, ...)",
                     fix)


def _check_file(path: Path) -> bytes:
    """Return the first bytes of a file's content; raise when it cannot be read or is empty."""
    try:
        head = read_head(path, HEAD_BYTES)
    except OSError as error:
        raise InputError(path, f"cannot be opened ({error.strerror})",
                         "check the file's permissions, or run as a user who can read it") from None
    if not head.strip() and len(head) < HEAD_BYTES:
        problem = "the file holds only white space" if head else "the file is empty"
        raise NoDataError(path, problem, "pass the log once the trainer has written records to it")
    reject_utf16(path, head)
    if logical_suffix(path) in (".csv", ".tsv"):
        reject_other_separator(path, head)
    return head


def _load_folder(path: Path, **options) -> list[Run]:
    """Read every supported log directly inside a folder; a trainer's run folder (W&B run,
    checkpoint, output_dir) with no log at its top is read as one run by the step reader, and an
    output_dir with pairs recorded in RECORDER_FOLDER/ as the run of those pairs."""
    runs: list[Run] = []
    step_reader = _step_reader()
    shards = _pair_shards(path, options.get("column_map"))
    recorded = path / RECORDER_FOLDER
    if not shards and recorded.is_dir() and (recorded_shards := _pair_shards(recorded, options.get("column_map"))):
        # The recorded pairs carry every pair's log-probs, more than the trainer's step log.
        runs = _load_shards(recorded, recorded_shards, **options)
        for run in runs:
            run.notes.insert(1, f"read the pairs recorded in {RECORDER_FOLDER}/; the trainer's "
                             "step logs in this folder were not read (pass one to read it)")
        return runs
    if step_reader is not None and not shards and _is_run_folder(path):
        return [_read_run_folder(path, step_reader, options)]
    if shards:
        runs.extend(_load_shards(path, shards, **options))
    read_as_shards = set(shards)
    for child in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        if child.name.endswith(".dpodiag.json") or child in read_as_shards:
            continue
        if child.name in WANDB_INTERNAL_LOGS:
            continue  # wandb's own debug output, not the training log
        step_format = step_reader.sniff_step_log(child) if step_reader is not None else None
        if step_format in getattr(step_reader, "REJECTED_FORMATS", ()):
            continue  # configs, summaries and binaries beside the logs
        if step_format or looks_like_pair_log(child, options.get("column_map")):
            runs.extend(load_runs(child, **options))
    if not runs and step_reader is not None:
        runs = _read_run_subfolders(path, step_reader, options)
    if not runs and step_reader is not None:
        runs.append(_read_run_folder(path, step_reader, options))
    if not runs:
        raise InputError(path, "the folder contains no supported log", "pass a folder with .parquet, "
                         ".csv, .jsonl or trainer log files, or pass the files themselves")
    return runs


def _is_run_folder(path: Path) -> bool:
    """Tell whether `path` is one trainer run: an output_dir with checkpoint-N/ folders, or a
    W&B run folder (files/ or run-<id>.wandb)."""
    return ((path / "files").is_dir() or any(path.glob("run-*.wandb"))
            or any(p.is_dir() for p in path.glob("checkpoint-*")))


def _read_run_folder(path: Path, step_reader: Any, options: dict) -> Run:
    # The step reader picks the best log of the folder and notes which one it read.
    run = step_reader.read_step_log(path, dialect=options.get("dialect"),
                                    column_map=options.get("column_map"))
    from dpodiag.io.metadata import apply_metadata
    apply_metadata(run.meta, path, {}, options.get("flags"))
    return run


def _read_run_subfolders(path: Path, step_reader: Any, options: dict) -> list[Run]:
    """Read each run folder directly inside `path` (a W&B `wandb/` folder, a sweep's outputs).

    Symbolic links are skipped, because W&B's latest-run link repeats a run. A run folder with
    no log in it (a run killed before its first record) is skipped while another one is read.
    """
    runs: list[Run] = []
    first_error: DpodiagError | None = None
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink()):
        if not _is_run_folder(child):
            continue
        try:
            runs.append(_read_run_folder(child, step_reader, options))
        except NoDataError as error:
            first_error = first_error or error
    if not runs and first_error is not None:
        raise first_error
    return runs


def _pair_shards(path: Path, column_map: dict[str, str] | None) -> list[Path]:
    """Return the parquet shards part-*.parquet directly inside `path` that hold pair columns."""
    return sorted(p for p in path.glob("part-*.parquet")
                  if p.is_file() and looks_like_pair_log(p, column_map))


def _load_shards(path: Path, shards: list[Path], *, column_map: dict[str, str] | None = None,
                 flags: dict | None = None, dialect: str | None = None,
                 streaming: bool | None = None, defer: bool = False) -> list[Run]:
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
    runs = read_pair_log(path, column_map=column_map, flags=flags, run_name=shard_run_name(path),
                         shards=shards, streaming=streaming, defer=defer)
    for run in runs:
        run.notes.insert(0, f"read {counted(len(shards), 'shard')} {path.name}/part-*.parquet as one run")
    return runs


def shard_run_name(folder: Path) -> str:
    """Return the run name of the shards in `folder`: the folder's name, or the name of the folder
    above it for the recorder's default folder (`output_dir/dpodiag-pairs` is the run
    `output_dir`)."""
    folder = folder.resolve()
    if folder.name == RECORDER_FOLDER and folder.parent.name:
        return folder.parent.name
    return folder.name


def _step_reader():
    """Return the step-log reader package, or None while it is not installed."""
    try:
        from dpodiag.io import steplogs
    except ImportError:
        return None
    return steplogs
