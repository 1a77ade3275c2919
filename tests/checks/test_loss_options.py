"""Loss fits that search a variant's option besides beta: label smoothing left undeclared, and a
SimPO gamma recorded wrong."""

import polars as pl
import pytest

import dpodiag
from synthetic import SAMPLE_LOGS, codes, make_pairs, softplus

BETA = 0.1


def margin(frame: pl.DataFrame) -> pl.Expr:
    return BETA * ((pl.col("policy_chosen_logps") - pl.col("reference_chosen_logps"))
                   - (pl.col("policy_rejected_logps") - pl.col("reference_rejected_logps")))


def with_loss(frame: pl.DataFrame, loss) -> pl.DataFrame:
    z = frame.select(margin(frame)).to_series().to_numpy()
    return frame.with_columns(loss=pl.Series(loss(z)))


def cdpo(eps):
    return lambda z: (1 - eps) * softplus(-z) + eps * softplus(z)


def robust(eps):
    return lambda z: ((1 - eps) * softplus(-z) - eps * softplus(z)) / (1 - 2 * eps)


@pytest.mark.parametrize("loss_type, loss", [("cdpo", cdpo(0.1)), ("robust", robust(0.15))])
def test_undeclared_label_smoothing_is_a_loss_type_mismatch(check_frame, loss_type, loss):
    findings = check_frame(with_loss(make_pairs(eval_every=5), loss))
    (finding,) = [f for f in findings if f.code == "loss-type-mismatch"]
    assert finding.evidence["fitted"] == loss_type
    assert finding.evidence["fitted_options"]["label_smoothing"] == pytest.approx(
        0.1 if loss_type == "cdpo" else 0.15, abs=1e-3)
    assert "loss-mismatch" not in codes(findings)


def test_plain_sigmoid_named_over_zero_smoothing():
    # cdpo and robust at label smoothing 0 compute the sigmoid loss. Their fits may land a
    # rounding error below sigmoid's on the float32 losses of the healthy sample, so ties go to sigmoid.
    runs = dpodiag.load(SAMPLE_LOGS / "healthy.parquet", flags={"loss_type": "ipo"})
    findings = dpodiag.diagnose(runs, device="cpu").findings
    (finding,) = [f for f in findings if f.code == "loss-type-mismatch"]
    assert finding.evidence["fitted"] == "sigmoid"
    assert finding.title == "The logged loss is sigmoid, not ipo"


def test_declared_label_smoothing_is_silent(check_frame):
    findings = check_frame(with_loss(make_pairs(eval_every=5), cdpo(0.1)), loss_type="cdpo",
                           label_smoothing=0.1)
    assert codes(findings, "error") == set()


def simpo_pairs(gamma: float, beta: float = 2.0) -> pl.DataFrame:
    frame = make_pairs(eval_every=5).drop("reference_chosen_logps", "reference_rejected_logps")
    per_token = (pl.col("policy_chosen_logps") / pl.col("chosen_length")
                 - pl.col("policy_rejected_logps") / pl.col("rejected_length"))
    z = frame.select(beta * per_token - gamma).to_series().to_numpy()
    return frame.with_columns(loss=pl.Series(softplus(-z)))


def test_simpo_gamma_recorded_wrong(check_frame):
    findings = check_frame(simpo_pairs(0.5), loss_type="simpo", beta=2.0, simpo_gamma=1.5)
    (finding,) = [f for f in findings if f.code == "loss-mismatch"]
    assert finding.evidence["option"] == "simpo_gamma"
    assert finding.evidence["fitted_value"] == pytest.approx(0.5, abs=1e-3)
    assert finding.title == "The logged loss uses simpo_gamma 0.5, not 1.5"


def test_simpo_gamma_recorded_right(check_frame):
    findings = check_frame(simpo_pairs(0.5), loss_type="simpo", beta=2.0, simpo_gamma=0.5)
    assert codes(findings, "error") == set()


def test_saturation_follows_the_fitted_loss(check_frame):
    # Margins past ln(19) under an IPO loss recorded as sigmoid: IPO has a finite target margin,
    # so the saturation warning of the recorded sigmoid does not apply.
    frame = make_pairs(rejected_drift=-1.5, eval_every=5)
    # TRL's IPO on per-token averaged log-ratios.
    h_bar = ((pl.col("policy_chosen_logps") - pl.col("reference_chosen_logps")) / pl.col("chosen_length")
             - (pl.col("policy_rejected_logps") - pl.col("reference_rejected_logps")) / pl.col("rejected_length"))
    ipo = frame.with_columns(loss=(h_bar - 1 / (2 * BETA)) ** 2)
    findings = check_frame(ipo)
    assert "loss-type-mismatch" in codes(findings, "error")
    assert "margin-saturation" not in codes(findings)


def test_saturation_of_the_recorded_loss(check_frame):
    frame = make_pairs(rejected_drift=-1.5, eval_every=5)
    assert "margin-saturation" in codes(check_frame(frame), "warning")
