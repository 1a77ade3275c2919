"""Synthetic pair logs for the benchmark: several DPO runs in one parquet file.

Each run scores train batches of TRAIN_BATCH pairs at every step, over EPOCHS passes of its data
set, and an eval set of EVAL_PAIRS pairs every EVAL_EVERY steps (step 0 included). The reference
log-prob of an example is fixed (a frozen reference), the policy starts at the reference, and the
log-ratios drift apart as training goes on. The logged loss is the sigmoid loss in float32. The
last run computes its loss with beta 0.2 while the metadata records 0.1, so `check` has an error
to find.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

RUNS = 4
TRAIN_BATCH = 256
EVAL_PAIRS = 1024
EVAL_EVERY = 100
EPOCHS = 3
BETA = 0.1
MISMATCHED_BETA = 0.2
METADATA = {"beta": BETA, "loss_type": "sigmoid"}
# Rows per parquet row group and per generated chunk.
CHUNK_ROWS = 1_000_000


@dataclass
class RunShape:
    """Steps and data-set sizes of one run that together give about `rows` rows."""

    steps: int
    train_examples: int

    @classmethod
    def for_rows(cls, rows: int) -> "RunShape":
        # Rows per step: one train batch, plus an eval pass every EVAL_EVERY steps.
        per_step = TRAIN_BATCH + EVAL_PAIRS / EVAL_EVERY
        steps = max(int(rows / per_step), EVAL_EVERY)
        return cls(steps=steps, train_examples=max(TRAIN_BATCH * steps // EPOCHS, TRAIN_BATCH))


@dataclass
class Examples:
    """Per-example values that do not change between scorings: lengths and reference log-probs."""

    ids: np.ndarray
    chosen_length: np.ndarray
    rejected_length: np.ndarray
    reference_chosen: np.ndarray
    reference_rejected: np.ndarray

    @classmethod
    def draw(cls, prefix: str, count: int, rng: np.random.Generator) -> "Examples":
        chosen_length = np.clip(rng.lognormal(5.0, 0.6, count), 4, 2048).astype(np.int64)
        rejected_length = np.clip(rng.lognormal(5.0, 0.6, count), 4, 2048).astype(np.int64)
        # Summed log-probs: about -1.1 nats per token, so |log-prob| grows with the length.
        reference_chosen = -chosen_length * rng.normal(1.1, 0.15, count).clip(0.3)
        reference_rejected = -rejected_length * rng.normal(1.2, 0.15, count).clip(0.3)
        ids = np.char.add(f"{prefix}-", np.arange(count).astype(str))
        return cls(ids, chosen_length, rejected_length, reference_chosen, reference_rejected)


def scored_rows(run: str, split: str, steps: np.ndarray, example: np.ndarray, epoch: np.ndarray,
                examples: Examples, progress: np.ndarray, beta_used: float,
                rng: np.random.Generator) -> pa.Table:
    """Build one row per (step, example) scoring; the policy log-probs drift from the reference
    as training progresses."""
    n = len(steps)
    chosen_ratio = progress * (-2.0 + 6.0 * rng.standard_normal(n))
    rejected_ratio = progress * (-15.0 + 8.0 * rng.standard_normal(n))
    reference_chosen = examples.reference_chosen[example]
    reference_rejected = examples.reference_rejected[example]
    margin = beta_used * (chosen_ratio - rejected_ratio)
    loss = np.logaddexp(0.0, -margin).astype(np.float32)
    return pa.table({
        "run": pa.array(np.full(n, run)).dictionary_encode(),
        "split": pa.array(np.full(n, split)).dictionary_encode(),
        "step": steps.astype(np.int64),
        "example_id": examples.ids[example],
        "epoch": epoch,
        "policy_chosen_logps": reference_chosen + chosen_ratio,
        "policy_rejected_logps": reference_rejected + rejected_ratio,
        "reference_chosen_logps": reference_chosen,
        "reference_rejected_logps": reference_rejected,
        "chosen_length": examples.chosen_length[example],
        "rejected_length": examples.rejected_length[example],
        "loss": loss,
    })


def run_tables(index: int, shape: RunShape, seed: int, runs: int = RUNS):
    """Yield the tables of run `index` of `runs` in step order, each about CHUNK_ROWS rows."""
    rng = np.random.default_rng(seed + index)
    run = f"run-{index}"
    beta_used = MISMATCHED_BETA if index == runs - 1 else BETA
    train = Examples.draw("train", shape.train_examples, rng)
    evals = Examples.draw("eval", EVAL_PAIRS, rng)
    order = np.concatenate([rng.permutation(shape.train_examples) for _ in range(EPOCHS + 1)])
    steps_per_chunk = max(CHUNK_ROWS // TRAIN_BATCH, EVAL_EVERY)

    for first in range(0, shape.steps, steps_per_chunk):
        step_range = np.arange(first, min(first + steps_per_chunk, shape.steps))
        parts = []

        # Train pairs: batch rows in data-set order, one epoch after another.
        steps = np.repeat(step_range, TRAIN_BATCH)
        position = steps * TRAIN_BATCH + np.tile(np.arange(TRAIN_BATCH), len(step_range))
        parts.append(scored_rows(run, "train", steps, order[position], position / shape.train_examples,
                                 train, steps / shape.steps, beta_used, rng))

        # Eval passes over the fixed eval set.
        eval_steps = step_range[step_range % EVAL_EVERY == 0]
        if len(eval_steps):
            steps = np.repeat(eval_steps, EVAL_PAIRS)
            example = np.tile(np.arange(EVAL_PAIRS), len(eval_steps))
            parts.append(scored_rows(run, "eval", steps, example,
                                     steps * TRAIN_BATCH / shape.train_examples,
                                     evals, steps / shape.steps, beta_used, rng))
        table = pa.concat_tables(parts)
        yield table.take(np.argsort(table.column("step").to_numpy(), kind="stable"))


def write_pair_log(path: Path, rows: int, seed: int = 0, runs: int = RUNS) -> Path:
    """Write a pair log of about `rows` rows in `runs` runs to `path` (through a temporary file).

    A log of one run has no run column, as a trainer that writes one file per run writes it.
    """
    shape = RunShape.for_rows(rows // runs)
    partial = path.with_name(path.name + ".partial")
    writer = None
    try:
        for index in range(runs):
            for table in run_tables(index, shape, seed, runs):
                if runs == 1:
                    table = table.drop_columns(["run"])
                if writer is None:
                    schema = table.schema.with_metadata({"dpodiag": json.dumps(METADATA)})
                    writer = pq.ParquetWriter(partial, schema)
                writer.write_table(table.cast(writer.schema), row_group_size=CHUNK_ROWS)
    finally:
        if writer is not None:
            writer.close()
    partial.replace(path)
    return path
