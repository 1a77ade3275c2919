"""Turn the records a step-log reader found into the canonical step table and a `Run`.

Every reader returns a `RawLog`: numeric records in file order with the keys the trainer wrote.
`build_run` maps those keys through a dialect, splits train from eval records, drops the HF
end-of-training summary, assigns steps and collects run metadata.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dpodiag.dialects import (
    EXTRA_METRICS, IGNORED_KEYS, STEP_KEYS, STEP_LOG_METRICS, Dialect, detect_dialect,
    fixed_reward_ratio, get_dialect, legacy_trl_reason, split_key,
)
from dpodiag.errors import InputError, NoDataError, UsageError
from dpodiag.io.steplogs.runmeta import run_meta
from dpodiag.io.steplogs.sidecars import run_prefix
from dpodiag.io.steplogs.summaries import pop_summaries, pop_summary_columns
from dpodiag.schema import PAIR_ALIASES, PAIR_COLUMNS, STEP_METRICS, Run

SPLIT_ORDER = {"train": 0, "eval": 1}
# Keys that only per-pair logs carry: a file with one of them is a pair log, not a step log.
_PAIR_SPECIFIC = ("example_id", "policy_chosen_logps", "policy_rejected_logps",
                  "reference_chosen_logps", "reference_rejected_logps", "chosen_logratio",
                  "rejected_logratio", "chosen_length", "rejected_length", "preference_strength")
PAIR_ONLY_KEYS = frozenset([*_PAIR_SPECIFIC, "prompt", "chosen", "rejected"]
                           + [alias for name in _PAIR_SPECIFIC for alias in PAIR_ALIASES[name]])
# File names that do not identify a run; the folder name is used instead.
GENERIC_STEMS = {"trainer_state", "trainer_log", "log_history", "output", "all_results",
                 "eval_results", "train_results", "wandb-summary", "config", "events", "metrics",
                 "history", "log", "logs", "stdout", "train", "summary", "README", "readme"}


@dataclass
class RawLog:
    """Numeric records of one log, in file order, as a reader found them."""

    records: list[dict[str, float]]
    format: str
    frame: pl.DataFrame | None = None
    """Alternative to `records` for table formats: one row per record, numeric columns."""
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    """RunMeta values read from the trainer's own files (source "trainer-config")."""
    hints: dict[str, Any] = field(default_factory=dict)
    """Hints for dialect detection: framework, transformers_version."""


# ms-swift prints the step as text, "global_step/max_steps": "5/100".
PROGRESS_KEY = "global_step/max_steps"
PROGRESS = re.compile(r"(\d+)/\d+")


def numeric_items(record: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    """Keep the numeric values of one parsed record; return them and the names of the rest."""
    remaining: dict[str, float] = {}
    dropped: list[str] = []
    for key, value in record.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            remaining[str(key)] = float(value)
        elif key == PROGRESS_KEY and isinstance(value, str) and (match := PROGRESS.fullmatch(value.strip())):
            remaining["global_step"] = float(match.group(1))
        elif value is not None:
            dropped.append(str(key))
    return remaining, dropped


def is_pair_record(keys: Iterable[str]) -> bool:
    """Tell whether record keys (or CSV columns) belong to a per-pair log."""
    return any(key.lower() in PAIR_ONLY_KEYS for key in keys)


def default_run_name(path: Path) -> str:
    """Name a run after its file's run prefix, or after its folder for generic file names."""
    stem = run_prefix(path)
    if stem and stem not in GENERIC_STEMS and not path.is_dir():
        return stem
    folder = path if path.is_dir() else path.parent
    if folder.name in ("files", "logs", "runs") or folder.name.startswith("checkpoint-"):
        folder = folder.parent
    return folder.name or stem


def build_run(raw: RawLog, path: Path, *, dialect: str | None = None,
              run_name: str | None = None, column_map: dict[str, str] | None = None) -> Run:
    """Build the canonical step-level `Run` from a reader's `RawLog`."""
    notes = list(raw.notes)
    if raw.frame is not None:
        source, summary_only = pop_summary_columns(raw.frame, notes)
        keys = source.columns
    else:
        records, summary_only = pop_summaries(raw.records, notes)
        keys = list(dict.fromkeys(key for record in records for key in record))
        source = pl.from_dicts(records, infer_schema_length=None) if records else pl.DataFrame()
    chosen = get_dialect(dialect) if dialect else detect_dialect(
        keys, {"format": raw.format, **raw.hints})
    # TRL 1.16's CPOTrainer logs the keys of DPOTrainer 0.14-0.28 (and nll_loss), so only its
    # rewards, beta * policy log-probs in every record, tell the two apart.
    sides = [("rewards/chosen", "logps/chosen"), ("rewards/rejected", "logps/rejected")]
    if dialect is None and chosen.name in ("trl", "trl-legacy") and fixed_reward_ratio(source, sides):
        chosen = get_dialect("trl-cpo")
        notes.append("read as TRL CPOTrainer: the rewards are one multiple (beta) of the policy "
                     "log-probs in every record, so there is no reference")
    if dialect is None and chosen.name == "trl-legacy":
        reason = legacy_trl_reason(keys, raw.hints.get("transformers_version"), raw.format)
        notes.append(f"read as TRL 0.13 or earlier (trl-legacy) because {reason}. That version "
                     "logs one device's metrics, so the bounds between logged metrics are not "
                     "checked; pass --dialect trl if it comes from TRL 0.14 or later")

    # Classify every column, build one frame per split and stack them in file order.
    plan = _plan_columns(keys, chosen, column_map or {}, path)
    table = _split_frames(source, plan)
    if table.height == 0:
        raise NoDataError(path, f"no metric values in its {source.height} records "
                          f"(keys: {_preview(keys)})",
                          "pass a log that contains per-step training metrics")
    skipped = source.height - summary_only - table.get_column("__record").n_unique()
    if skipped:
        notes.append(f"{skipped} record{'s' if skipped > 1 else ''} without metric values "
                     "skipped")
    table = _assign_steps(table, plan, notes, chosen, path, raw.meta.get("trainer_config", {}))

    name = run_name or default_run_name(path)
    table = _finish(table, name)
    meta = run_meta(raw.meta, chosen, table, notes)
    return Run(name=name, source=str(path), level="steps", table=table, meta=meta,
               format=raw.format, dialect=chosen.name, column_mapping=plan.mapping, notes=notes,
               step_source="logged" if plan.step_keys else "counted")


@dataclass
class _Plan:
    step_keys: list[str]
    shared: dict[str, list[str]]
    metrics: dict[str | None, dict[str, list[str]]]
    """Split (None for keys without a split marker) -> output column -> source keys."""
    mapping: dict[str, str]


def _plan_columns(keys: list[str], dialect: Dialect, column_map: dict[str, str],
                  path: Path) -> _Plan:
    # Resolve user overrides first: canonical=theirs, where theirs is a full key or a base key.
    overrides = _check_overrides(column_map, keys, path)
    plan = _Plan([], {}, {"train": {}, "eval": {}, None: {}}, {})
    step_rank: list[tuple[int, str]] = []
    extras_seen: dict[str, str] = {}
    for key in keys:
        split, base = split_key(key)
        if key in IGNORED_KEYS or base in IGNORED_KEYS:
            continue
        target = overrides.get(key) or overrides.get(base)
        if target is None and (key in STEP_KEYS or base in STEP_KEYS):
            step_rank.append((STEP_KEYS.index(key if key in STEP_KEYS else base), key))
            continue
        target = target or dialect.canonical(base) or _extra_name(base, key, extras_seen)
        if target == "epoch":
            plan.shared.setdefault("epoch", []).append(key)
        else:
            plan.metrics[split].setdefault(target, []).append(key)
        plan.mapping.setdefault(target, key)
    plan.step_keys = [key for _, key in sorted(step_rank)]
    if plan.step_keys:
        plan.mapping["step"] = plan.step_keys[0]
    return plan


def _check_overrides(column_map: dict[str, str], keys: list[str], path: Path) -> dict[str, str]:
    # Validate canonical=theirs pairs and return theirs -> canonical.
    valid = STEP_LOG_METRICS
    bases = {split_key(key)[1] for key in keys}
    reverse: dict[str, str] = {}
    for canonical, theirs in column_map.items():
        if canonical in PAIR_COLUMNS and canonical not in valid:
            continue  # a pair-log column, for the pair logs given in the same command
        if canonical not in valid:
            raise UsageError(f"column map: unknown canonical name {canonical!r}; use one of: "
                             f"{', '.join(sorted(valid))}")
        if theirs not in keys and theirs not in bases:
            raise UsageError(f"column map: {theirs!r} is not a key of {path}; its keys are: "
                             f"{_preview(keys, 30)}")
        reverse[theirs] = canonical
    return reverse


def _extra_name(base: str, key: str, seen: dict[str, str]) -> str:
    # extra_<snake case>; a second key with the same sanitised name gets a numeric suffix.
    name = "extra_" + (re.sub(r"[^0-9a-z]+", "_", base.lower()).strip("_") or "value")
    candidate, number = name, 2
    while candidate in seen and seen[candidate] != base:
        candidate, number = f"{name}_{number}", number + 1
    seen[candidate] = base
    return candidate


def _split_frames(frame: pl.DataFrame, plan: _Plan) -> pl.DataFrame:
    # One row per (record, split) that has at least one metric value for that split.
    frame = frame.with_columns(pl.all().cast(pl.Float64, strict=False))
    frame = frame.with_row_index("__record").with_columns(pl.col("__record").cast(pl.Int64))
    common = [pl.col("__record")]
    common += [pl.col(key).alias(f"__step{i}") for i, key in enumerate(plan.step_keys)]
    if "epoch" in plan.shared:
        common.append(pl.coalesce(plan.shared["epoch"]).alias("epoch"))

    # A key without a split marker is an eval value in a record with eval keys, no
    # train-prefixed keys and no unmarked twin of an eval key (an HF eval dict with perf/*
    # extras). Otherwise it is a train value (a CSV row with loss and val_loss side by side).
    keys_of = {split: [k for keys in plan.metrics[split].values() for k in keys]
               for split in plan.metrics}
    twins = [k for name, keys in plan.metrics[None].items() if name in plan.metrics["eval"]
             for k in keys]
    eval_only = (_any_present(keys_of["eval"]) & ~_any_present(keys_of["train"])
                 & ~_any_present(twins))
    owner = {"train": ~eval_only, "eval": eval_only}
    frames = []
    for split in ("train", "eval"):
        names = list(dict.fromkeys([*plan.metrics[split], *plan.metrics[None]]))
        values = []
        for name in names:
            sources = [pl.col(k) for k in plan.metrics[split].get(name, [])]
            bare = plan.metrics[None].get(name, [])
            sources += [pl.when(owner[split]).then(pl.col(k)) for k in bare]
            values.append(pl.coalesce(sources).alias(name))
        present = _any_present(keys_of[split]) | (_any_present(keys_of[None]) & owner[split])
        frames.append(frame.filter(present).select(*common, *values,
                                                   pl.lit(split).alias("split")))
    table = pl.concat(frames, how="diagonal_relaxed")
    order = pl.col("split").replace_strict(SPLIT_ORDER, default=2)
    return table.sort([pl.col("__record"), order])


def _any_present(keys: list[str]) -> pl.Expr:
    if not keys:
        return pl.lit(False)
    return pl.any_horizontal([pl.col(key).is_not_null() for key in keys])


def _assign_steps(table: pl.DataFrame, plan: _Plan, notes: list[str],
                  dialect: Dialect, path: Path, config: dict[str, Any]) -> pl.DataFrame:
    # Use the logged step where there is one; count train records where there is none.
    step_columns = [f"__step{i}" for i in range(len(plan.step_keys))]
    if step_columns:
        logged = pl.coalesce(step_columns).fill_nan(None).round(0)
        out_of_range = table.filter(logged.abs() >= 2.0 ** 63)
        if out_of_range.height:
            record = int(out_of_range.get_column("__record")[0]) + 1
            value = out_of_range.select(logged).item()
            raise InputError(path, f"log record {record}: step {value:g} does not fit in a "
                             "64-bit integer", "fix the step of that record or remove the record")
        step = logged.cast(pl.Int64)
        table = table.with_columns(step.alias("step")).drop(step_columns)
        missing = table.get_column("step").null_count()
        if missing:
            notes.append(f"{missing} rows had no step value; they take the step of the row "
                         "before them")
            table = table.with_columns(pl.col("step").forward_fill().fill_null(0))
        if dialect.step_unit != "optimizer-step":
            notes.append(f"steps count {dialect.step_unit}s, not optimizer steps")
        return table
    if dialect.step_unit != "optimizer-step":
        notes.append(f"{dialect.name} logs count {dialect.step_unit} on the step axis, not "
                     "optimizer steps; this file has no such counter")
    is_train = pl.col("split") == "train"
    if table.filter(is_train).height:
        counted = is_train.cast(pl.Int64).cum_sum()
        every = _uniform_logging_steps(table.filter(is_train), config.get("logging_steps"))
        if every:
            notes.append(f"the log has no step key: the k-th train record is at step "
                         f"{every} x k (logging_steps={every}, and its epochs grow evenly)")
            return _eval_steps(table.with_columns((counted * every).alias("step")), every,
                               config, notes)
        notes.append("the log has no step key: step k is the k-th train record, and an eval "
                     "record takes the step of the train record before it (0 before the first)")
    else:
        counted = pl.int_range(1, pl.len() + 1, dtype=pl.Int64)
        notes.append("the log has no step key: step k is the k-th record")
    return table.with_columns(counted.alias("step"))


def _eval_steps(table: pl.DataFrame, logging_steps: int, config: dict[str, Any],
                notes: list[str]) -> pl.DataFrame:
    # An evaluation at step s = j * eval_steps follows the train record at the last multiple of
    # logging_steps up to s. When eval_steps >= logging_steps, s is the first multiple of
    # eval_steps at or after that record's step.
    every = config.get("eval_steps")
    if (config.get("eval_strategy") != "steps" or isinstance(every, bool)
            or not isinstance(every, (int, float)) or every != int(every)
            or not logging_steps <= every):
        notes.append("an eval record takes the step of the train record before it")
        return table
    every = int(every)
    notes.append(f"an eval record is at the next multiple of eval_steps={every}")
    is_eval = (pl.col("split") == "eval") & (pl.col("step") > 0)
    at_eval = ((pl.col("step") + every - 1) // every) * every
    return table.with_columns(pl.when(is_eval).then(at_eval).otherwise(pl.col("step")).alias("step"))


def _uniform_logging_steps(train: pl.DataFrame, logging_steps: Any) -> int | None:
    """Return logging_steps when the train records sit every logging_steps optimizer steps.

    HF's Trainer logs at every multiple of logging_steps, and its epoch is step / steps per
    epoch. So the k-th record's epoch is a * k with no offset, unless records are missing, the
    log starts mid-run or logging_first_step adds a record at step 1. The fit allows for epochs
    rounded to 2 decimals, as transformers before 4.36 printed them.
    """
    if isinstance(logging_steps, bool) or not isinstance(logging_steps, (int, float)):
        return None
    if logging_steps <= 1 or logging_steps != int(logging_steps) or "epoch" not in train.columns:
        return None
    epoch = train.get_column("epoch").to_numpy().astype(float)
    if len(epoch) < 3 or not np.isfinite(epoch).all():
        return None
    k = np.arange(1, len(epoch) + 1, dtype=float)
    slope = float(np.dot(k, epoch) / np.dot(k, k))  # least squares through the origin
    if slope <= 0:
        return None
    residual = np.abs(epoch - slope * k).max()
    return int(logging_steps) if residual <= 0.006 + 0.05 * slope else None


def _finish(table: pl.DataFrame, name: str) -> pl.DataFrame:
    # Fixed column order: keys, schema metrics, documented extras, then extra_* in input order.
    present = set(table.columns)
    metrics = [m for m in STEP_METRICS if m in present]
    extras = [m for m in EXTRA_METRICS if m in present]
    others = [c for c in table.columns if c.startswith("extra_")]
    table = table.with_columns(pl.lit(name).alias("run"), pl.col("step").cast(pl.Int64),
                               pl.col("__record").alias("record"))
    floats = [pl.col(c).cast(pl.Float64) for c in [*metrics, *extras, *others]]
    return table.select("run", "split", "step", "record", *floats)


def _preview(keys: list[str], limit: int = 8) -> str:
    listed = ", ".join(keys[:limit])
    return listed + (f", ... ({len(keys)} in all)" if len(keys) > limit else "") or "none"
