import polars as pl
import pytest

from dpodiag.pipeline import analyse
from dpodiag.checks import run_checks
from dpodiag.schema import Run, RunMeta


@pytest.fixture
def check_frame():
    """Run every check on a pair table and return the findings."""

    def run(frame: pl.DataFrame, **meta):
        meta = {"beta": 0.1, "loss_type": "sigmoid", **meta}
        frame = frame.with_columns(run=pl.lit("t")) if "run" not in frame.columns else frame
        if "split" not in frame.columns:
            frame = frame.with_columns(split=pl.lit("train"))
        mapping = {c: c for c in frame.columns}
        data = analyse(Run("t", "memory", "pairs", frame, RunMeta(**meta), "parquet",
                           column_mapping=mapping), device="cpu")
        return run_checks(data)

    return run
