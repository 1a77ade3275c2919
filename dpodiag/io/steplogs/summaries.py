"""The HF Trainer's end-of-training summary (train_runtime, train_loss, ...): not a step.

HF's log_history ends with a record that holds only the summary keys. W&B, TensorBoard and HF's
`all_results.json` merge the same keys into the record of the last step or the final eval, so
there only the summary keys are removed. The values are remaining as a note on the run.
"""

from __future__ import annotations

import math

import polars as pl

from dpodiag.dialects import HF_SUMMARY_KEYS, IGNORED_KEYS, STEP_KEYS, split_key

BOOKKEEPING = set(STEP_KEYS) | IGNORED_KEYS | {"epoch"}


def pop_summaries(records: list[dict[str, float]],
                  notes: list[str]) -> tuple[list[dict[str, float]], int]:
    """Remove summary keys from `records`; return them and the count of summary-only records.

    Emptied records stay in the list, so that record numbers keep their file order.
    """
    remaining: list[dict[str, float]] = []
    summary: dict[str, float] = {}
    summary_only = 0
    for record in records:
        once = {key: strip_train(key) for key in record}
        if "train_runtime" not in once.values():
            remaining.append(record)
            continue
        # A record with split-marked metrics keeps them; an HF log dict is all summary.
        merged = any(split_key(key)[0] for key in record if once[key] not in HF_SUMMARY_KEYS)
        in_summary = [k for k in record if once[k] in HF_SUMMARY_KEYS or not merged]
        summary.update({once[k]: record[k] for k in in_summary if once[k] not in BOOKKEEPING})
        rest = {k: v for k, v in record.items() if k not in in_summary}
        remaining.append(rest)
        summary_only += all(split_key(key)[1] in BOOKKEEPING for key in rest)
    if summary:
        values = ", ".join(f"{key}={format_value(value)}" for key, value in summary.items())
        notes.append(f"end-of-training summary (not a step): {values}")
    return remaining, summary_only


def pop_summary_columns(frame: pl.DataFrame, notes: list[str]) -> tuple[pl.DataFrame, int]:
    """Drop the summary columns of a table; return it and the count of summary-only rows."""
    once = {column: strip_train(column) for column in frame.columns}
    if "train_runtime" not in once.values():
        return frame, 0
    summary = [c for c in frame.columns if once[c] in HF_SUMMARY_KEYS]
    values = {once[c]: frame.get_column(c).drop_nulls() for c in summary}
    listed = ", ".join(f"{k}={format_value(v[-1])}" for k, v in values.items() if v.len())
    notes.append(f"end-of-training summary (not a step): {listed}")
    rest = [c for c in frame.columns if c not in summary and split_key(c)[1] not in BOOKKEEPING]
    only = pl.any_horizontal([pl.col(c).is_not_null() for c in summary])
    if rest:
        only = only & ~pl.any_horizontal([pl.col(c).is_not_null() for c in rest])
    return frame.drop(summary), frame.filter(only).height


def strip_train(key: str) -> str:
    return key[len("train/"):] if key.startswith("train/") else key


def format_value(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6g}"
