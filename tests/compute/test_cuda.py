"""The recompute on a CUDA device equals the CPU recompute within float64 rounding.

Skipped without CUDA; `benchmarks/gpu_check.sh` runs it on a machine with a GPU.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from dpodiag.compute import recompute
from dpodiag.compute.device import resolve_device
from dpodiag.schema import Run, RunMeta

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DERIVED = [c for c in recompute.DERIVED_COLUMNS if c != "beta_used"]


def seeded_pairs(rows: int = 20_000, seed: int = 7) -> pl.DataFrame:
    """Pairs with summed log-probs, lengths, a per-row beta, and a few NaN and infinite values."""
    rng = np.random.default_rng(seed)
    chosen_length = rng.integers(4, 400, rows).astype(float)
    rejected_length = rng.integers(4, 400, rows).astype(float)
    reference_chosen = -1.1 * chosen_length + rng.normal(0, 3, rows)
    reference_rejected = -1.2 * rejected_length + rng.normal(0, 3, rows)
    policy_chosen = reference_chosen + rng.normal(-1, 5, rows)
    policy_rejected = reference_rejected + rng.normal(-8, 6, rows)
    policy_chosen[rng.choice(rows, 20, replace=False)] = np.nan
    policy_rejected[rng.choice(rows, 5, replace=False)] = -np.inf
    return pl.DataFrame({
        "step": np.arange(rows) // 64, "split": "train", "run": "cuda",
        "policy_chosen_logps": policy_chosen, "policy_rejected_logps": policy_rejected,
        "reference_chosen_logps": reference_chosen, "reference_rejected_logps": reference_rejected,
        "chosen_length": chosen_length, "rejected_length": rejected_length,
        "beta": rng.choice([0.05, 0.1, 0.5], rows),
    })


def run_of(frame: pl.DataFrame, loss_type: str) -> Run:
    meta = RunMeta(beta=0.1, loss_type=loss_type, label_smoothing=0.1, simpo_gamma=0.5)
    return Run("cuda", "memory", "pairs", frame, meta, "parquet")


@pytest.mark.parametrize("loss_type", ["sigmoid", "robust", "ipo", "hinge", "exo_pair", "discopop", "simpo", "orpo"])
def test_cuda_recompute_matches_cpu(loss_type, monkeypatch):
    # Chunks of 3,000 rows, so that the device path runs over several chunks.
    monkeypatch.setattr(recompute, "CUDA_CHUNK_ROWS", 3_000)
    run = run_of(seeded_pairs(), loss_type)
    on_cpu = recompute.recompute(run, torch.device("cpu"))
    on_cuda = recompute.recompute(run, torch.device("cuda"))
    for column in DERIVED:
        expected = on_cpu.get_column(column).to_numpy()
        actual = on_cuda.get_column(column).to_numpy()
        np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=column)
    assert on_cuda.get_column("beta_used").equals(on_cpu.get_column("beta_used"))


def test_auto_device_is_cuda():
    assert resolve_device("auto").type == "cuda"
