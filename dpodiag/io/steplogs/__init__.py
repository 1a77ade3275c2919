"""Step-log readers: detect the format of a trainer's log by its content, read it into a Run.

`sniff_step_log` names the format of a file (or of the best log in a folder) from at most its
first megabyte. `read_step_log` reads it into a `Run` whose table is the canonical step table
(see `table.build_run`). Besides log formats, sniffing recognises files that sit beside logs but
are not logs (`rejected.FORMATS`); reading one raises an InputError that names the file to
pass instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import polars as pl

from dpodiag.dialects import get_dialect
from dpodiag.errors import DpodiagError, InputError, NoDataError
from dpodiag.io.steplogs import (
    console, csvlogs, jsonl, jsonlogs, linelogs, notebook, rejected, results_table, sidecars,
    tensorboard, wandb_binary,
)
from dpodiag.io.source import logical_suffix, read_head
from dpodiag.io.steplogs.table import RawLog, build_run
from dpodiag.schema import Run

__all__ = ["FORMATS", "REJECTED_FORMATS", "read_step_log", "sniff_step_log"]

HEAD_BYTES = 1 << 20
# Sniffers in order: binary and structured formats first, free text last.
SNIFFERS: list[Callable[[Path, bytes], str | None]] = [
    rejected.sniff, wandb_binary.sniff, tensorboard.sniff, notebook.sniff, jsonlogs.sniff, jsonl.sniff,
    csvlogs.sniff, linelogs.sniff, results_table.sniff, console.sniff,
]
READERS: dict[str, Callable[..., RawLog]] = {
    **{fmt: jsonlogs.read for fmt in ("trainer-state", "log-history-array",
                                      "log-history-wrapper", "hf-results", "wandb-summary",
                                      "tag-summary", "json-summary")},
    "console": console.read,
    **{fmt: linelogs.read for fmt in ("mlx-lm-console", "torchtune-txt", "nemo-rl-console")},
    "llamafactory-jsonl": jsonl.read, "jsonl": jsonl.read,
    "tensorboard": tensorboard.read,
    "wandb-binary": wandb_binary.read,
    "notebook": notebook.read,
    "results-table": results_table.read,
    "wandb-history-csv": csvlogs.read, "metrics-csv": csvlogs.read,
    **{fmt: rejected.read for fmt in rejected.FORMATS},
}
FORMATS = tuple(fmt for fmt in READERS if fmt not in rejected.FORMATS and fmt != "json-summary")
REJECTED_FORMATS = (*rejected.FORMATS, "json-summary")
# Formats to fall back on, by file extension, when sniffing finds nothing.
FALLBACK_BY_SUFFIX = {".log": "console", ".out": "console", ".txt": "console", ".md": "console",
                      ".err": "console", ".json": "json-summary", ".jsonl": "jsonl",
                      ".csv": "metrics-csv", ".ipynb": "notebook", ".yaml": "trainer-config", ".yml": "trainer-config"}
# When a folder is given, the log read is the first format found in this order.
FOLDER_PREFERENCE = ("trainer-state", "log-history-wrapper", "log-history-array",
                     "llamafactory-jsonl", "tensorboard", "console", "wandb-binary",
                     "wandb-history-csv", "metrics-csv", "torchtune-txt", "mlx-lm-console",
                     "nemo-rl-console", "jsonl", "notebook", "results-table",
                     "wandb-summary", "hf-results", "tag-summary")


def sniff_step_log(path: Path) -> str | None:
    """Return the step-log format of a file, or of the log chosen from a folder, else None."""
    path = Path(path)
    if path.is_dir():
        chosen = _choose_in_folder(path)
        return chosen[1] if chosen else None
    try:
        head = read_head(path, HEAD_BYTES)
    except (OSError, InputError):
        return None
    if not head.strip():
        return None
    for sniffer in SNIFFERS:
        fmt = sniffer(path, head)
        if fmt:
            return fmt
    return None


def read_step_log(path: Path, *, dialect: str | None = None, run_name: str | None = None,
                  column_map: dict[str, str] | None = None) -> Run:
    """Read a step log (a file, or a folder holding one) into a steps-level `Run`.

    `dialect` names the dialect instead of detecting it; `run_name` replaces the name taken from
    the file; `column_map` maps canonical names to the log's own keys (canonical=theirs).
    """
    path = Path(path)
    if dialect is not None:
        get_dialect(dialect)
    target, fmt, notes = _resolve(path)
    try:
        raw = _read(target, fmt, run_name)
        _add_trainer_meta(raw, target)
        raw.notes[:0] = notes
        return build_run(raw, target, dialect=dialect, run_name=run_name, column_map=column_map)
    except DpodiagError:
        raise
    except (OSError, UnicodeError, ValueError, KeyError, TypeError, IndexError,
            pl.exceptions.PolarsError) as error:
        # A malformed file surfaces as one of these deep inside a parser.
        detail = (str(error).strip().splitlines() or [""])[0][:200]
        raise InputError(target, f"cannot be read as {fmt} ({type(error).__name__}: {detail})",
                         "pass the file as the trainer wrote it") from None


def _resolve(path: Path) -> tuple[Path, str, list[str]]:
    # Find the file to read and its format; raise a one-line error when there is none.
    if not path.exists():
        raise InputError(path, "file not found", "check the path")
    notes: list[str] = []
    if path.is_dir():
        chosen = _choose_in_folder(path)
        if chosen is None:
            raise NoDataError(path, "no step log found in this folder",
                              "pass trainer_state.json, trainer_log.jsonl, an event file or "
                              "the console output")
        notes.append(f"read {chosen[0].relative_to(path)} from folder {path}")
        return chosen[0], chosen[1], notes
    try:
        head = read_head(path, HEAD_BYTES)
    except OSError as error:
        raise InputError(path, f"cannot be opened ({error.strerror})",
                         "check that the file is readable") from None
    if not head.strip():
        raise NoDataError(path, "the file is empty",
                          "pass a step log such as trainer_state.json or the console output")
    fmt = sniff_step_log(path) or FALLBACK_BY_SUFFIX.get(logical_suffix(path))
    if fmt is None:
        raise InputError(path, "not a supported step log format",
                         "pass trainer_state.json, a log_history JSON, console output, "
                         "trainer_log.jsonl, a TensorBoard event file, a W&B run file or a W&B "
                         "CSV export")
    return path, fmt, notes


def _read(path: Path, fmt: str, run_name: str | None) -> RawLog:
    if fmt in ("wandb-history-csv", "metrics-csv"):
        return csvlogs.read(path, fmt, run_name=run_name)
    return READERS[fmt](path, fmt)


def _add_trainer_meta(raw: RawLog, path: Path) -> None:
    # Precedence among trainer files: inside the log, then configs beside it, then a banner.
    values, notes, hints = sidecars.sibling_meta(path)
    banner = raw.hints.pop("banner", {}) or {}
    for key, value in {**banner, **values}.items():
        raw.meta.setdefault(key, value)
    if banner:
        notes.append("metadata from the console banner: "
                     + ", ".join(f"{k}={v}" for k, v in banner.items()))
    for key, value in hints.items():
        raw.hints.setdefault(key, value)
    raw.notes.extend(notes)


def _choose_in_folder(folder: Path) -> tuple[Path, str] | None:
    # Candidates: the folder, its files/ (W&B) and its latest checkpoint-N/ folder.
    folders = [folder, folder / "files"]
    checkpoints = sorted((p for p in folder.glob("checkpoint-*") if p.is_dir()),
                         key=_checkpoint_number)
    folders += checkpoints[-1:]
    found: dict[str, Path] = {}
    for candidate_folder in folders:
        if not candidate_folder.is_dir():
            continue
        for candidate in sorted(candidate_folder.iterdir()):
            if candidate.is_file():
                fmt = sniff_step_log(candidate)
                if fmt in FOLDER_PREFERENCE:
                    found.setdefault(fmt, candidate)
    for fmt in FOLDER_PREFERENCE:
        if fmt in found:
            return found[fmt], fmt
    return None


def _checkpoint_number(folder: Path) -> int:
    number = folder.name.rsplit("-", 1)[-1]
    return int(number) if number.isdigit() else -1
