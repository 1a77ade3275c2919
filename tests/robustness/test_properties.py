"""Property-based tests: invariants of the recomputed rewards on arbitrary valid pair tables, and
readers that never crash on arbitrary bytes.

Each example goes through the public API (`dpodiag.load`, `dpodiag.diagnose`) from a real file.
"""

from __future__ import annotations

import gzip
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import dpodiag
from dpodiag.errors import DpodiagError
from dpodiag.formats import to_json
from make_corpus import (console_text, cut_at_last_line, jsonl_text, log_records, pair_frame,
                         trainer_state)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DERIVED = ("chosen_logratio", "rejected_logratio", "margin", "probability", "grad_weight",
           "loss_recomputed")


def collected(frame):
    return frame.collect() if isinstance(frame, pl.LazyFrame) else frame


@st.composite
def pair_tables(draw) -> tuple[pl.DataFrame, float]:
    """A valid pair log with finite values: steps, log-probs, lengths and a logged loss."""
    steps = draw(st.integers(1, 5))
    pairs = draw(st.integers(1, 10))
    rows = steps * pairs
    beta = draw(st.floats(0.01, 5.0))
    logps = st.floats(-3000.0, -1e-3, allow_nan=False, allow_infinity=False)
    columns = {name: draw(st.lists(logps, min_size=rows, max_size=rows))
               for name in ("policy_chosen_logps", "policy_rejected_logps",
                            "reference_chosen_logps", "reference_rejected_logps")}
    lengths = st.lists(st.integers(1, 4096), min_size=rows, max_size=rows)
    frame = pl.DataFrame({
        "step": np.repeat(np.arange(steps), pairs),
        "example_id": [f"pair-{i}" for i in range(pairs)] * steps,
        **columns,
        "chosen_length": draw(lengths), "rejected_length": draw(lengths),
    })
    margin = beta * ((frame["policy_chosen_logps"] - frame["reference_chosen_logps"])
                     - (frame["policy_rejected_logps"] - frame["reference_rejected_logps"]))
    frame = frame.with_columns(loss=np.logaddexp(0.0, -margin.to_numpy()))
    return frame, beta


def diagnose_table(frame: pl.DataFrame, beta: float):
    """Write `frame` as a parquet pair log with sigmoid metadata and diagnose it on the CPU."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.parquet"
        table = frame.to_arrow().replace_schema_metadata(
            {"dpodiag": json.dumps({"beta": beta, "loss_type": "sigmoid"})})
        import pyarrow.parquet as pq
        pq.write_table(table, path)
        return dpodiag.diagnose(dpodiag.load([path]), device="cpu")


def swapped(frame: pl.DataFrame) -> pl.DataFrame:
    """The same pairs with chosen and rejected exchanged."""
    return frame.rename({"policy_chosen_logps": "policy_rejected_logps",
                         "policy_rejected_logps": "policy_chosen_logps",
                         "reference_chosen_logps": "reference_rejected_logps",
                         "reference_rejected_logps": "reference_chosen_logps",
                         "chosen_length": "rejected_length", "rejected_length": "chosen_length"})


@SETTINGS
@given(pair_tables())
def test_finite_inputs_give_finite_results(case):
    frame, beta = case
    diagnosis = diagnose_table(frame, beta)
    (data,) = diagnosis.runs
    pairs = collected(data.pairs)
    for name in DERIVED:
        assert pairs[name].is_finite().all(), name
    steps = collected(data.steps)
    for name, dtype in steps.schema.items():
        if dtype.is_float():
            assert not steps[name].is_nan().any(), name
            assert not steps[name].is_infinite().any(), name
    assert "non-finite-values" not in {f.code for f in diagnosis.findings}
    json.loads(to_json(diagnosis))


def test_ess_fraction_with_saturated_margins():
    # Equal weights give an effective sample size of every pair, however small the weights.
    frame = pair_frame(steps=1, pairs=4).with_columns(
        policy_chosen_logps=pl.col("reference_chosen_logps") + 2000.0,
        policy_rejected_logps=pl.col("reference_rejected_logps") - 2000.0)
    (data,) = diagnose_table(frame, 0.1).runs
    assert collected(data.steps)["ess_fraction"].to_list() == [1.0]


@SETTINGS
@given(pair_tables())
def test_probabilities_and_accuracy_in_unit_interval(case):
    frame, beta = case
    (data,) = diagnose_table(frame, beta).runs
    pairs = collected(data.pairs)
    assert pairs["probability"].is_between(0.0, 1.0).all()
    assert pairs["grad_weight"].is_between(0.0, 1.0).all()
    steps = collected(data.steps)
    assert steps["rewards_accuracies"].is_between(0.0, 1.0).all()


@SETTINGS
@given(pair_tables())
def test_jensen_bound_per_step(case):
    frame, beta = case
    (data,) = diagnose_table(frame, beta).runs
    pairs = collected(data.pairs)
    per_step = pairs.group_by("step").agg(pl.col("loss_recomputed").mean().alias("mean_loss"),
                                          pl.col("margin").mean().alias("mean_margin"))
    for mean_loss, mean_margin in per_step.select("mean_loss", "mean_margin").iter_rows():
        bound = float(np.logaddexp(0.0, -mean_margin))
        assert mean_loss >= bound - 1e-9 * max(1.0, abs(bound))


@SETTINGS
@given(pair_tables())
def test_swapping_chosen_and_rejected_negates_margins(case):
    frame, beta = case
    (data,) = diagnose_table(frame, beta).runs
    (flipped,) = diagnose_table(swapped(frame), beta).runs
    key = ["step", "example_id"]
    pairs = collected(data.pairs).sort(key)
    other = collected(flipped.pairs).sort(key)
    assert (pairs["margin"] == -other["margin"]).all()
    assert np.allclose(pairs["probability"], 1.0 - other["probability"], rtol=0, atol=1e-12)
    accuracy = collected(data.steps).sort("step")["rewards_accuracies"]
    flipped_accuracy = collected(flipped.steps).sort("step")["rewards_accuracies"]
    ties = pairs.group_by("step").agg((pl.col("margin") == 0).mean()).sort("step")[:, 1]
    assert np.allclose(accuracy + flipped_accuracy + ties, 1.0)


# Readers on arbitrary bytes

SUFFIXES = [".parquet", ".csv", ".tsv", ".jsonl", ".ndjson", ".arrow", ".json", ".log", ".txt",
            ".out", ".md", ".yaml", ".csv.gz", ".jsonl.gz", ".json.gz", ".events.out.tfevents", ""]


def valid_files() -> list[bytes]:
    """Complete inputs of several formats, which the byte strategies cut and splice."""
    frame = pair_frame(steps=3, pairs=4)
    records = log_records(5)
    parquet_path = Path(tempfile.mkdtemp()) / "pairs.parquet"
    frame.write_parquet(parquet_path)
    files = [frame.write_csv().encode(), frame.write_ndjson().encode(),
             trainer_state(records).encode(), jsonl_text(records).encode(),
             console_text(records).encode(), parquet_path.read_bytes()]
    parquet_path.unlink()
    parquet_path.parent.rmdir()
    return files + [gzip.compress(data) for data in files[:4]]


VALID = valid_files()


@st.composite
def damaged(draw) -> bytes:
    """A valid file cut at a random point, with random bytes spliced in."""
    data = draw(st.sampled_from(VALID))
    cut = draw(st.integers(0, len(data)))
    splice = draw(st.binary(max_size=64))
    where = draw(st.integers(0, cut))
    return data[:where] + splice + data[where:cut]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=512), damaged()), suffix=st.sampled_from(SUFFIXES))
# Two step records: the one with a margin has no accuracy.
@example(data=b'{"rewards/accuracies":0.5,"step":1}\n{"rewards/margins":0.1,"step":2}', suffix=".jsonl")
def test_readers_never_crash(data, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"run{suffix}"
        path.write_bytes(data)
        try:
            runs = dpodiag.load([path])
        except DpodiagError:
            return
        assert runs
        try:
            dpodiag.diagnose(runs, device="cpu")
        except DpodiagError:
            pass


def test_partial_trainer_state_keeps_complete_records(tmp_path):
    # Every cut point after the first complete record gives the records before it.
    text = trainer_state(log_records(4))
    first_end = text.index("}", text.index('"log_history"')) + 1
    for cut in range(first_end, len(text), 37):
        path = tmp_path / "trainer_state.json"
        path.write_text(text[:cut])
        (run,) = dpodiag.load([path])
        complete = text[:cut].count('"step"')
        assert run.table.height in (complete, complete - 1), cut
        assert any("cut off" in note for note in run.notes), cut


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_cut_pair_log_drops_only_last_row(tmp_path, suffix):
    frame = pair_frame(steps=2, pairs=3)
    text = frame.write_csv() if suffix == ".csv" else frame.write_ndjson()
    path = tmp_path / f"pairs{suffix}"
    path.write_text(cut_at_last_line(text))
    (run,) = dpodiag.load([path])
    assert run.table.height == frame.height - 1
    assert math.isclose(run.table["policy_chosen_logps"][0], frame["policy_chosen_logps"][0])
