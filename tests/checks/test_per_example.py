"""The per-example summary grouped by a hash of (split, example_id), against the text key."""

import polars as pl
from polars.testing import assert_frame_equal

from dpodiag.checks import per_example
from dpodiag.pipeline import analyse
from dpodiag.schema import Run, RunMeta
from synthetic import make_pairs


def analysed(frame: pl.DataFrame):
    frame = frame.with_columns(run=pl.lit("t"))
    return analyse(Run("t", "memory", "pairs", frame, RunMeta(beta=0.1, loss_type="sigmoid"), "parquet",
                       column_mapping={c: c for c in frame.columns}), device="cpu")



def with_ids() -> pl.DataFrame:
    frame = make_pairs(eval_every=5)
    # The train rows of one example lose their id; rows without an id form one group per split.
    return frame.with_columns(pl.when(pl.col("example_id") == frame.get_column("example_id")[0])
                              .then(None).otherwise(pl.col("example_id")).alias("example_id"))



def sorted_summary(data) -> pl.DataFrame:
    summary = per_example.example_summary(data)
    return summary.sort(summary.columns)



def test_summary_has_one_row_per_example():
    data = analysed(with_ids())
    summary = per_example.example_summary(data)
    examples = data.collect(data.scan_pairs().select(pl.struct(per_example.EXAMPLE_KEY).n_unique())).item()
    assert summary.height == examples
    assert summary.get_column("identified").sum() == examples - 1
    assert "_key" not in summary.columns



def test_summary_after_hash_collision(monkeypatch):
    expected = sorted_summary(analysed(with_ids()))
    # Every example hashes to one key, so the guard hash differs within that group.
    monkeypatch.setattr(per_example, "EXAMPLE_HASH", pl.lit(0, dtype=pl.UInt64))
    collided = sorted_summary(analysed(with_ids()))
    # The mean |reference| sums in another order, so it may differ in the last bits.
    assert_frame_equal(collided, expected, check_exact=False, rel_tol=1e-12)


def expected_summary(data) -> pl.DataFrame:
    """The summary written as plain aggregations over the text key."""
    finite = lambda name: pl.col(name).filter(pl.col(name).is_finite())
    same = ((pl.col("policy_chosen_logps") == pl.col("policy_rejected_logps"))
            & pl.col("policy_chosen_logps").is_finite()
            & (pl.col("reference_chosen_logps") == pl.col("reference_rejected_logps"))).fill_null(False)
    query = data.scan_pairs().group_by(per_example.EXAMPLE_KEY).agg(
        pl.len().alias("rows"), (pl.col("step").max() - pl.col("step").min()).alias("step_span"),
        pl.col("example_id").is_not_null().any().alias("identified"),
        same.all().alias("same"),
        finite("policy_chosen_logps").count().alias("policy_scored"),
        (finite("policy_chosen_logps").max() - finite("policy_chosen_logps").min()).alias("policy_spread"),
        finite("reference_chosen_logps").count().alias("reference_scored"),
        (finite("reference_chosen_logps").max() - finite("reference_chosen_logps").min()).alias("reference_spread"),
        finite("reference_chosen_logps").abs().mean().alias("reference_size"),
        finite("reference_rejected_logps").count().alias("reference_rejected_scored"),
        (finite("reference_rejected_logps").max() - finite("reference_rejected_logps").min())
        .alias("reference_rejected_spread"),
        finite("reference_rejected_logps").max().alias("reference_rejected_max"))
    return data.collect(query).drop(per_example.EXAMPLE_KEY)


def summaries(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    data = analysed(frame)
    summary = per_example.example_summary(data)
    expected = expected_summary(data).select(summary.columns)
    return summary.sort(summary.columns), expected.sort(summary.columns)


def test_summary_of_complete_table():
    summary, expected = summaries(make_pairs(eval_every=5))
    assert_frame_equal(summary, expected, check_exact=False, rel_tol=1e-12)


def test_summary_with_gaps_and_identical_pairs():
    # NaN policy and null reference log-probs in some rows, and one example whose chosen and
    # rejected are identical at every scoring.
    frame = with_ids().with_row_index("row")
    twin = pl.col("example_id") == "train-1"
    frame = frame.with_columns(
        pl.when((pl.col("row") % 7 == 0) & ~twin).then(float("nan")).otherwise(pl.col("policy_chosen_logps"))
        .alias("policy_chosen_logps"),
        pl.when((pl.col("row") % 5 == 0) & ~twin).then(None).otherwise(pl.col("reference_chosen_logps"))
        .alias("reference_chosen_logps"),
        pl.when(twin).then(pl.col("policy_chosen_logps")).otherwise(pl.col("policy_rejected_logps"))
        .alias("policy_rejected_logps"),
        pl.when(twin).then(pl.col("reference_chosen_logps")).otherwise(pl.col("reference_rejected_logps"))
        .alias("reference_rejected_logps")).drop("row")
    summary, expected = summaries(frame)
    assert summary.get_column("same").sum() == 1
    assert summary.get_column("policy_scored").sum() < summary.get_column("rows").sum()
    assert_frame_equal(summary, expected, check_exact=False, rel_tol=1e-12)
