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


def test_ranking_accuracy_skips_nonfinite_pairs(recomputed):
    import polars as pl
    first = recomputed.filter(pl.col("split") == "train").get_column("step").min()
    broken = recomputed.with_columns(
        pl.when((pl.col("step") == first) & (pl.col("split") == "train"))
        .then(float("nan")).otherwise(pl.col("policy_chosen_logps")).alias("policy_chosen_logps"))
    agg = step_aggregates(broken)
    step = agg.filter((pl.col("step") == first) & (pl.col("split") == "train"))
    # Every pair of the step is NaN: a gap in the chart, not an accuracy of 0.
    assert step.item(0, "ranking_accuracy") is None
    others = agg.filter(pl.col("step") != first)
    assert others.get_column("ranking_accuracy").is_not_null().all()


def test_integer_key_matches_string_keys(recomputed):
    # Two run names disable the integer (split, step) key, so the result comes from a group-by
    # over (run, split, step). Each half must equal the one-run result of the key path.
    import polars as pl
    from polars.testing import assert_frame_equal

    one_run = step_aggregates(recomputed)
    two_runs = step_aggregates(pl.concat([recomputed, recomputed.with_columns(run=pl.lit("s"))]))
    assert_frame_equal(two_runs.filter(pl.col("run") == "r"), one_run)
    assert two_runs.filter(pl.col("run") == "s").height == one_run.height


def test_unsorted_splits_and_negative_steps(recomputed):
    import polars as pl
    from polars.testing import assert_frame_equal

    shuffled = recomputed.with_columns(pl.col("step") - 3).sample(fraction=1.0, shuffle=True, seed=7)
    expected = step_aggregates(pl.concat([shuffled, shuffled.with_columns(run=pl.lit("s"))]))
    assert_frame_equal(step_aggregates(shuffled), expected.filter(pl.col("run") == "r"))


def test_nonfinite_columns_match_finite_path(recomputed):
    import polars as pl
    from polars.testing import assert_frame_equal

    # A NaN in one row of one step makes these columns take the finiteness test. The other
    # steps must keep the values of the table without it.
    broken = recomputed.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(float("nan")).otherwise(pl.col(name)).alias(name)
        for name in ("margin", "probability", "chosen_logratio", "loss_recomputed"))
    first_step = recomputed.row(0, named=True)
    other_steps = (pl.col("split") != first_step["split"]) | (pl.col("step") != first_step["step"])
    assert_frame_equal(step_aggregates(broken).filter(other_steps),
                       step_aggregates(recomputed).filter(other_steps), check_exact=False)


def test_step_slices_match_whole_table(recomputed, monkeypatch):
    import polars as pl
    from polars.testing import assert_frame_equal

    from dpodiag.compute import aggregate

    whole = step_aggregates(recomputed)
    # Slices of a few rows cut between many steps, and each still contains whole steps.
    monkeypatch.setattr(aggregate, "SORT_WINDOW_ROWS", 5)
    assert recomputed.get_column("step").is_sorted()
    assert_frame_equal(step_aggregates(recomputed), whole)
    assert_frame_equal(step_aggregates(recomputed.sort("step", descending=True)).sort(aggregate.KEYS), whole,
                       check_exact=False)
    assert pl.concat(list(aggregate._step_slices(recomputed.with_columns(_split_step=0)))).height == recomputed.height
