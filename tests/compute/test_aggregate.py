"""Per-step aggregates against a slow per-step loop over the pairs."""

import math

import numpy as np
import pytest
import torch

from dpodiag.compute.aggregate import step_aggregates
from dpodiag.compute.recompute import recompute
from dpodiag.schema import Run, RunMeta
from synthetic import make_pairs


@pytest.fixture
def recomputed():
    frame = make_pairs(steps=6, pairs=11, eval_every=3, noise=0.5).with_columns()
    frame = frame.with_columns(run=__import__("polars").lit("r"))
    run = Run("r", "mem", "pairs", frame, RunMeta(beta=0.2, loss_type="sigmoid"), "parquet")
    return recompute(run, torch.device("cpu"))


def test_aggregates_match_slow_loop(recomputed):
    agg = step_aggregates(recomputed)
    for row in agg.iter_rows(named=True):
        part = recomputed.filter((recomputed["split"] == row["split"]) & (recomputed["step"] == row["step"]))
        c, r = part["policy_chosen_logps"].to_list(), part["policy_rejected_logps"].to_list()
        c0, r0 = part["reference_chosen_logps"].to_list(), part["reference_rejected_logps"].to_list()
        margins = [0.2 * ((a - a0) - (b - b0)) for a, b, a0, b0 in zip(c, r, c0, r0)]
        weights = [1 / (1 + math.exp(m)) for m in margins]
        assert row["pairs"] == len(margins)
        assert row["rewards_margins"] == pytest.approx(sum(margins) / len(margins))
        assert row["rewards_chosen"] == pytest.approx(sum(0.2 * (a - a0) for a, a0 in zip(c, c0)) / len(c))
        assert row["rewards_accuracies"] == pytest.approx(sum(m > 0 for m in margins) / len(margins))
        assert row["ranking_accuracy"] == pytest.approx(sum(a > b for a, b in zip(c, r)) / len(c))
        assert row["grad_weight_mean"] == pytest.approx(sum(weights) / len(weights))
        assert row["ess_fraction"] == pytest.approx(sum(weights) ** 2 / sum(w * w for w in weights) / len(weights))
        assert row["margin_q50"] == pytest.approx(float(np.quantile(margins, 0.5)))
        losses = [math.log1p(math.exp(-m)) for m in margins]
        assert row["loss_recomputed"] == pytest.approx(sum(losses) / len(losses))


def test_nonfinite_pairs_are_counted_not_averaged(recomputed):
    import polars as pl
    broken = recomputed.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(float("nan")).otherwise(pl.col("margin")).alias("margin"))
    agg = step_aggregates(broken)
    assert agg["nonfinite_margins"].sum() == 1
    assert agg["rewards_margins"].is_finite().all()
