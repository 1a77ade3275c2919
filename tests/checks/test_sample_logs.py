"""The shipped sample runs, trained for real: each seeded bug is found, the healthy runs pass."""

import pytest

import dpodiag
from synthetic import SAMPLE_LOGS, codes

# Sample file -> the error code its seeded bug must raise (None: no error at all).
EXPECTED = {
    "healthy": None,
    "simpo-reference-free": None,
    "reference-tracks-policy": "reference-tracks-policy",
    "reference-not-initial-policy": "reference-not-initial-policy",
    "preference-inverted": "preference-direction-inverted",
    "chosen-rejected-swapped": "preference-direction-inverted",
    "beta-mismatch": "beta-mismatch",
    "nan-step": "non-finite-values",
    "reference-dropout": "reference-not-initial-policy",
    "loss-scaled-by-accumulation": "loss-scale-mismatch",
    "ipo-recorded-as-sigmoid": "loss-type-mismatch",
}


@pytest.fixture(scope="module")
def diagnosis():
    paths = [SAMPLE_LOGS / f"{name}.parquet" for name in EXPECTED]
    return dpodiag.diagnose(dpodiag.load(paths), device="cpu")


@pytest.mark.parametrize("name,code", EXPECTED.items())
def test_sample_errors(diagnosis, name, code):
    errors = codes([f for f in diagnosis.findings if f.run == name], "error")
    assert errors == ({code} if code else set())


def test_samples_are_small():
    for path in SAMPLE_LOGS.glob("*.parquet"):
        assert path.stat().st_size < 1_000_000, path.name
