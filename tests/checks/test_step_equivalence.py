"""A broken sample run, aggregated into the trainer_state.json that TRL would write, still shows
its bug to the step-level checks wherever window means carry it."""

import pyarrow.parquet as pq
import json

import pytest

import dpodiag
from synthetic import SAMPLE_LOGS, codes
from trainer_state import write_trainer_state

# Sample -> the error code the step-level checks raise at logging_steps=1. The pair-level code
# differs where aggregates carry the bug in another form: a beta mismatch breaks the Jensen bound
# loss >= softplus(-mean margin) that every sigmoid log obeys.
EXPECTED = {
    "healthy": None,
    "reference-tracks-policy": "reference-tracks-policy",
    "reference-not-initial-policy": "reference-not-initial-policy",
    "preference-inverted": "preference-direction-inverted",
    "chosen-rejected-swapped": "preference-direction-inverted",
    "beta-mismatch": "metric-identity-violated",
    "nan-step": "non-finite-values",
    "reference-dropout": "reference-not-initial-policy",
    "loss-scaled-by-accumulation": "loss-scale-mismatch",
    "ipo-recorded-as-sigmoid": "loss-type-mismatch",
}


def declared(name):
    meta = json.loads(pq.read_schema(SAMPLE_LOGS / f"{name}.parquet").metadata[b"dpodiag"])
    return meta["beta"], meta["loss_type"]


@pytest.mark.parametrize("name", EXPECTED)
def test_step_log_shows_the_bug(tmp_path, name):
    beta, loss_type = declared(name)
    path = write_trainer_state(SAMPLE_LOGS / f"{name}.parquet", tmp_path / "trainer_state.json", beta)
    # The converted log has no grad_norm, which alone would make it look like TRL <= 0.13.
    runs = dpodiag.load(path, flags={"beta": beta, "loss_type": loss_type}, dialect="trl")
    assert runs[0].level == "steps"
    errors = codes(dpodiag.diagnose(runs).findings, "error")
    expected = EXPECTED[name]
    if expected is None:
        assert errors == set()
    else:
        assert expected in errors
