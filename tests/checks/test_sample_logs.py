"""The shipped sample runs, trained for real: each seeded bug is found, the healthy runs pass."""

import pytest

import dpodiag
from synthetic import SAMPLE_LOGS, codes

# Sample file -> the exact set of error codes its seeded bug must raise, and a warning it must
# raise where the bug shows as a warning.
EXPECTED = {
    "healthy": (set(), None),
    "simpo-reference-free": (set(), None),
    "reference-tracks-policy": ({"reference-tracks-policy"}, None),
    "reference-not-initial-policy": ({"reference-not-initial-policy"}, None),
    "preference-inverted": ({"preference-direction-inverted"}, None),
    "chosen-rejected-swapped": ({"preference-direction-inverted"}, None),
    "beta-mismatch": ({"beta-mismatch"}, None),
    "nan-step": ({"non-finite-values"}, None),
    # Dropout makes the step-0 reference differ from the policy and vary between scorings.
    "reference-dropout": ({"reference-not-initial-policy", "reference-not-frozen"}, None),
    "loss-scaled-by-accumulation": ({"loss-scale-mismatch"}, None),
    "ipo-recorded-as-sigmoid": ({"loss-type-mismatch"}, None),
    # Padding in the mask makes each example's reference log-prob depend on its batch.
    "padding-in-logps": ({"reference-not-frozen"}, "mask-or-padding-suspect"),
}


@pytest.fixture(scope="module")
def diagnosis():
    paths = [SAMPLE_LOGS / f"{name}.parquet" for name in EXPECTED]
    return dpodiag.diagnose(dpodiag.load(paths), device="cpu")


@pytest.mark.parametrize("name", EXPECTED)
def test_sample_findings(diagnosis, name):
    errors, warning = EXPECTED[name]
    findings = [f for f in diagnosis.findings if f.run == name]
    assert codes(findings, "error") == errors
    if warning:
        assert warning in codes(findings, "warning")


def test_samples_are_small():
    for path in SAMPLE_LOGS.glob("*.parquet"):
        assert path.stat().st_size < 1_000_000, path.name
