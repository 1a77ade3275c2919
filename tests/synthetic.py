"""Small pair logs built from the formulas, for tests that need a precise, controlled case.

Each step moves the policy's log-ratios by a fixed drift plus noise; the logged loss is
computed from the logged log-probs with the given loss function, unless a test overrides it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq


def softplus(x):
    return np.logaddexp(0.0, x)


def make_pairs(steps=30, pairs=16, beta=0.1, chosen_drift=0.05, rejected_drift=-0.3,
               noise=0.02, seed=0, loss_beta=None, eval_every=0, start_step=0):
    """Return a pair table: policy starts at the reference and separates chosen from rejected."""
    rng = np.random.default_rng(seed)
    # Summed log-probs scale with the response length, about -1.2 nats per token.
    lw = rng.integers(8, 40, pairs).astype(float)
    ll = rng.integers(8, 40, pairs).astype(float)
    c0 = -1.2 * lw + rng.normal(0, 2, pairs)
    r0 = -1.25 * ll + rng.normal(0, 2, pairs)
    frames = []
    for step in range(start_step, start_step + steps):
        splits = ["train"] + (["eval"] if eval_every and step % eval_every == 0 else [])
        for split in splits:
            k = step - start_step
            rw = chosen_drift * k + (rng.normal(0, noise, pairs) if k else 0.0)
            rl = rejected_drift * k + (rng.normal(0, noise, pairs) if k else 0.0)
            frames.append(pl.DataFrame({
                "step": [step] * pairs, "split": [split] * pairs,
                "example_id": [f"{split}-{i}" for i in range(pairs)],
                "policy_chosen_logps": c0 + rw, "policy_rejected_logps": r0 + rl,
                "reference_chosen_logps": c0, "reference_rejected_logps": r0,
                "chosen_length": lw, "rejected_length": ll,
                "loss": softplus(-(loss_beta or beta) * (rw - rl)) * np.ones(pairs),
            }))
    return pl.concat(frames)


def write_parquet(frame: pl.DataFrame, path: Path, **meta) -> Path:
    """Write `frame` with the run metadata `meta` under the parquet key "dpodiag"."""
    table = frame.to_arrow()
    if meta:
        table = table.replace_schema_metadata({"dpodiag": json.dumps(meta)})
    pq.write_table(table, path)
    return path


LN2 = math.log(2)
SAMPLE_LOGS = Path(__file__).resolve().parent.parent / "sample_logs"


def codes(findings, severity=None):
    """The set of finding codes, optionally of one severity."""
    return {f.code for f in findings if severity is None or f.severity == severity}
