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
