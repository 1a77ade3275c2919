"""Run metadata from parquet key-value metadata, a sidecar RUN.dpodiag.json and CLI flags."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl

from dpodiag.compute.loss_names import PAIRED_LOSS_TYPES, canonical_loss_type
from dpodiag.errors import InputError, UsageError
from dpodiag.schema import RunMeta

METADATA_KEY = "dpodiag"
NUMERIC_FIELDS = ("beta", "label_smoothing", "simpo_gamma")
TEXT_FIELDS = ("loss_type", "logps_normalisation", "framework", "policy_model", "reference_model")


def sidecar_path(path: Path) -> Path:
    """Return RUN.dpodiag.json beside RUN, e.g. ``run.parquet`` -> ``run.dpodiag.json``."""
    name = path.name
    for suffix in (".gz", ".zst"):
        name = name.removesuffix(suffix)
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return path.with_name(f"{stem}.dpodiag.json")


def validate_meta(values: dict[str, Any], where: str, error: type) -> dict[str, Any]:
    """Check and normalise metadata values; `where` names the source in the error message."""
    clean: dict[str, Any] = {}
    for key in NUMERIC_FIELDS:
        if values.get(key) is None:
            continue
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _error(error, where, f"expected {key} to be a finite number, got {value!r}", key)
        clean[key] = float(value)
    if clean.get("beta") is not None and clean["beta"] <= 0:
        raise _error(error, where, f"expected beta to be > 0, got {clean['beta']}", "beta")
    eps = clean.get("label_smoothing")
    if eps is not None and not 0 <= eps < 0.5:
        raise _error(error, where, f"expected label_smoothing to be in [0, 0.5), got {eps}", "label_smoothing")
    for key in TEXT_FIELDS:
        if values.get(key) is not None:
            clean[key] = str(values[key])
    if "loss_type" in clean:
        loss_type = canonical_loss_type(clean["loss_type"])
        if loss_type is None:
            known = ", ".join(PAIRED_LOSS_TYPES)
            raise _error(error, where, f"unknown loss_type {clean['loss_type']!r}; expected one of {known}",
                         "loss_type")
        clean["loss_type"] = loss_type
    if clean.get("logps_normalisation") not in (None, "sum", "mean"):
        raise _error(error, where, f"expected logps_normalisation to be 'sum' or 'mean', got "
                                   f"{clean['logps_normalisation']!r}")
    settings = values.get("trainer_config")
    if settings is not None and not isinstance(settings, dict):
        raise _error(error, where, f"expected trainer_config to be a JSON object, got {settings!r}")
    if settings:
        clean["trainer_config"] = dict(settings)
    return clean


def _error(error: type, where: str, problem: str, key: str | None = None):
    if error is UsageError and where == "command line" and key:
        return UsageError(f"--{key.replace('_', '-')}: {problem}")
    if error is UsageError:
        return UsageError(f"{where}: {problem}")
    return error(where, problem, "fix the value or override it with a command-line flag")


def read_parquet_meta(path: Path, key_value: dict[bytes, bytes] | None) -> dict[str, Any]:
    """Return the JSON object stored under the "dpodiag" key of a parquet file's metadata."""
    raw = (key_value or {}).get(METADATA_KEY.encode())
    if raw is None:
        return {}
    try:
        values = json.loads(raw)
    except ValueError:
        raise InputError(path, f"parquet metadata key {METADATA_KEY!r} is not valid JSON",
                         "rewrite it as a JSON object or remove it") from None
    if not isinstance(values, dict):
        raise InputError(path, f"parquet metadata key {METADATA_KEY!r} is not a JSON object",
                         "rewrite it as a JSON object")
    clean = validate_meta(values, str(path), InputError)
    # `dpodiag convert` of several runs stores each run's metadata under "runs", by run name.
    runs = values.get("runs")
    if isinstance(runs, dict):
        clean["runs"] = {}
        for name, entry in runs.items():
            if not isinstance(entry, dict):
                continue
            clean["runs"][str(name)] = validate_meta(entry, f"{path} (run {name})", InputError)
            if isinstance(entry.get("columns"), list):
                clean["runs"][str(name)]["columns"] = [str(c) for c in entry["columns"]]
    return clean


def run_entry(file_meta: dict[str, Any], run: str) -> dict[str, Any]:
    """Return the metadata of one run of a file: its own entry under "runs", else the file's."""
    return file_meta.get("runs", {}).get(run, file_meta)


def own_columns(table: pl.DataFrame | pl.LazyFrame, file_meta: dict, name: str):
    """Drop the columns that a converted file of several runs holds only for other runs."""
    columns = run_entry(file_meta, name).get("columns")
    if not columns:
        return table
    keep = set(columns) | {"run", "split", "step"}
    return table.drop([c for c in table.collect_schema().names() if c not in keep])



def read_sidecar(path: Path) -> dict[str, Any]:
    """Return the metadata in RUN.dpodiag.json beside `path`, or {} when there is none."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return {}
    try:
        values = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(sidecar, f"cannot read the sidecar metadata ({exc})",
                         "fix the JSON or remove the file") from None
    if not isinstance(values, dict):
        raise InputError(sidecar, "the sidecar metadata is not a JSON object", "write a JSON object")
    return validate_meta(values, str(sidecar), InputError)


def apply_metadata(meta: RunMeta, path: Path, file_meta: dict[str, Any],
                   flags: dict[str, Any] | None) -> RunMeta:
    """Layer file metadata, the sidecar and CLI flags onto `meta`, in increasing precedence.
    The trainer settings (`trainer_config`) of the file and the sidecar are merged likewise."""
    sidecar = read_sidecar(path)
    for values in (file_meta, sidecar):
        meta.trainer_config.update(values.get("trainer_config") or {})
    meta.update(file_meta, "metadata")
    meta.update(sidecar, "sidecar")
    meta.update(validate_meta(flags or {}, "command line", UsageError), "flag")
    # The sigmoid loss with label smoothing is cDPO (TRL up to 0.28 computes it that way).
    if meta.loss_type == "sigmoid" and meta.label_smoothing > 0:
        meta.update({"loss_type": "cdpo"}, meta.source_of("loss_type") or "flag")
    return meta
