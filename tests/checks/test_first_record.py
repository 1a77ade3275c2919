"""Step logs: the records scored with the policy equal to the reference, and what their loss
shows about the loss's scale and variant."""

import math

import numpy as np
import pytest

from dpodiag.checks import run_checks
from dpodiag.checks.first_record import scale_factor_like
from dpodiag.pipeline import analyse
from synthetic import codes, softplus

from cases import healthy_steps, step_run

LN2 = math.log(2)


def findings_of(rows, counted=False, **meta):
    run = step_run(rows, **meta)
    if counted:
        run.step_source = "counted"
    return run_checks(analyse(run, device="cpu"))


def first_record(loss: float, chosen: float = 0.0, rejected: float = 0.0, first_step: int = 2) -> dict:
    """A healthy TRL log whose first record, at `first_step`, has the given loss and rewards."""
    rows = healthy_steps()
    rows["step"] = rows["step"] + (first_step - 1)
    for column, value in (("loss", loss), ("rewards_chosen", chosen), ("rewards_rejected", rejected),
                          ("rewards_margins", chosen - rejected)):
        rows[column] = np.concatenate([[value], rows[column][1:]])
    return rows


@pytest.mark.parametrize("counted", [False, True], ids=["logged steps", "counted steps"])
def test_zero_rewards_with_scaled_loss_fire(counted):
    # Rewards exactly 0 at step 2 (a learning rate still 0 in warm-up): the loss must be ln 2.
    findings = findings_of(first_record(4 * LN2), counted=counted, beta=0.1, loss_type="sigmoid")
    assert "loss-scale-mismatch" in codes(findings, "error")


@pytest.mark.parametrize("counted", [False, True], ids=["logged steps", "counted steps"])
def test_zero_rewards_with_zero_margin_loss_silent(counted):
    findings = findings_of(first_record(LN2), counted=counted, beta=0.1, loss_type="sigmoid")
    assert codes(findings, "error") == set()


def test_zero_rewards_with_ipo_loss_name_ipo():
    findings = findings_of(first_record(25.0), beta=0.1, loss_type="sigmoid")
    assert "loss-type-mismatch" in codes(findings, "error")


def test_small_margin_explains_the_first_loss():
    # Step 1 scored with margin 0.053 (dropout): softplus(-0.053) = 0.667, not ln 2, and right.
    rows = first_record(float(softplus(-0.053)), chosen=0.0516, rejected=-0.0014, first_step=1)
    assert codes(findings_of(rows, beta=0.1, loss_type="sigmoid"), "error") == set()


def short_responses(rows: dict) -> dict:
    """The same log with log-probs near -20 nats, so that numerics explain 0.2 nats at most."""
    return {**rows, "logps_chosen": rows["logps_chosen"] + 80, "logps_rejected": rows["logps_rejected"] + 90}


def test_rewards_before_update_name_a_larger_beta():
    # 0.0516 / beta 0.1 = 0.516 nats, beyond 1% of |logps| = 0.1985; beta 0.26 brings it within.
    rows = short_responses(first_record(float(softplus(-0.053)), chosen=0.0516, rejected=-0.0014,
                                        first_step=1))
    (finding,) = [f for f in findings_of(rows, beta=0.1, loss_type="sigmoid")
                  if f.code == "reference-not-initial-policy"]
    assert finding.evidence["beta_within_numerics"] == pytest.approx(0.0516 / 0.1985)
    assert "If beta is in fact 0.26 or more rather than 0.1" in finding.message


def test_rewards_before_update_beyond_any_beta():
    # 0.8 / 0.2 nats needs beta 4: no plausible beta explains it, so the message names none.
    rows = short_responses(first_record(float(softplus(-0.85)), chosen=0.8, rejected=-0.05,
                                        first_step=1))
    (finding,) = [f for f in findings_of(rows, beta=0.1, loss_type="sigmoid")
                  if f.code == "reference-not-initial-policy"]
    assert "If beta is in fact" not in finding.message


def test_small_margin_with_scaled_loss_is_a_scale():
    # 4 x softplus(-0.0106) = 2.7516 is also within 0.4% of exo_pair's zero-margin value. The
    # exact factor 4 at the logged margin is the closer explanation.
    rows = first_record(4 * float(softplus(-0.0106)), chosen=0.0103, rejected=-0.0003, first_step=1)
    errors = codes(findings_of(rows, beta=0.1, loss_type="sigmoid"), "error")
    assert errors == {"loss-scale-mismatch"}


def test_small_margin_with_ipo_loss_is_ipo():
    # IPO on summed log-ratios at h = 0.106: (0.106 - 5)^2 = 23.95.
    rows = first_record((0.106 - 5) ** 2, chosen=0.0103, rejected=-0.0003, first_step=1)
    errors = codes(findings_of(rows, beta=0.1, loss_type="sigmoid"), "error")
    assert errors == {"loss-type-mismatch"}


@pytest.mark.parametrize("ratio,expected", [(4.0, True), (0.25, True), (4.07, True), (36.1, True),
                                            (34.6, False), (1.0, False), (2.5, False)])
def test_scale_factor_like(ratio, expected):
    assert scale_factor_like(ratio) is expected


def first_step_then_every_fifth(loss: float, dialect: str) -> list:
    """logging_first_step with logging_steps 5: records at steps 1, 5, 10, ..., the first with
    `loss` and rewards that are not 0 (the reference is another model)."""
    rows = first_record(loss, chosen=-0.3, rejected=-1.2, first_step=1)
    rows["step"] = np.concatenate([[1], 5 * np.arange(1, 30)])
    return findings_of(rows, dialect=dialect, beta=0.1, loss_type="sigmoid")


def test_first_of_sparse_trl_records_is_before_update():
    assert "reference-not-initial-policy" in codes(first_step_then_every_fifth(0.2474, "trl"), "error")


def test_first_of_sparse_generic_records_is_not_judged():
    # Outside HF Trainer, a record at step 1 followed by step 5 may average several steps.
    assert "reference-not-initial-policy" not in codes(first_step_then_every_fifth(0.2474, "generic"))
