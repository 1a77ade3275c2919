"""Step-log checks on the conditions that decide between a bug and a loss working as designed:
the direction of the logged loss, a loss at its minimum of 0, and losses that fall below 0."""

import numpy as np

from dpodiag.checks import run_checks
from dpodiag.pipeline import analyse
from synthetic import codes, softplus

from cases import healthy_steps, step_run, with_evals


def findings_of(rows, **meta):
    return run_checks(analyse(step_run(rows, **meta), device="cpu"))


def drifting_to_rejected(loss_direction: float) -> dict:
    """A run whose margin drifts below 0 with accuracy below chance; the loss moves by
    `loss_direction` per step."""
    steps = np.arange(1, 31)
    margin = -0.01 * steps
    return healthy_steps(rewards_margins=margin, rewards_chosen=0.5 * margin, rewards_rejected=-0.5 * margin,
                         rewards_accuracies=np.full(30, 0.3), loss=0.7 + loss_direction * steps)


def test_inverted_preference_fires_when_the_loss_falls():
    findings = findings_of(drifting_to_rejected(-0.005))
    assert "preference-direction-inverted" in codes(findings, "error")


def test_inverted_preference_silent_when_the_loss_rises():
    # The log agrees with its own objective: a run that drifts before it learns.
    findings = findings_of(drifting_to_rejected(0.001))
    assert "preference-direction-inverted" not in codes(findings)


def zero_gradient(loss: np.ndarray) -> dict:
    steps = np.arange(1, 31)
    grad_norm = np.where(steps > 3, 0.0, 5.0)
    return healthy_steps(grad_norm=grad_norm, loss=loss, rewards_margins=np.full(30, 3.0),
                         rewards_chosen=np.full(30, 1.0), rewards_rejected=np.full(30, -2.0))


def test_zero_gradient_fires_with_a_positive_loss():
    findings = findings_of(zero_gradient(np.full(30, 0.3)))
    signal = [f for f in findings if f.code == "no-learning-signal"]
    assert len(signal) == 1
    assert signal[0].step == 4


def test_zero_gradient_silent_at_zero_loss():
    # Hinge past its margin: loss 0, gradient 0, by design.
    loss = np.where(np.arange(1, 31) > 3, 0.0, 0.5)
    assert "no-learning-signal" not in codes(findings_of(zero_gradient(loss), loss_type="hinge", beta=0.5))


def saturated(loss: np.ndarray) -> dict:
    margin = np.full(30, 3.5)
    return healthy_steps(loss=loss, rewards_margins=margin, rewards_chosen=np.full(30, 1.0),
                         rewards_rejected=np.full(30, -2.5), rewards_accuracies=np.ones(30))


def test_saturation_assumes_sigmoid_when_the_loss_allows_it():
    assert "margin-saturation" in codes(findings_of(saturated(np.round(softplus(-np.full(30, 3.5)), 4))))


def test_saturation_skips_a_loss_the_sigmoid_cannot_log():
    # A loss of exactly 0 at margin 3.5, where softplus(-3.5) = 0.03: not the sigmoid default.
    assert "margin-saturation" not in codes(findings_of(saturated(np.zeros(30))))


def robust(margin: np.ndarray, eps: float = 0.1) -> np.ndarray:
    return ((1 - eps) * softplus(-margin) - eps * softplus(margin)) / (1 - 2 * eps)


def negative_loss_steps() -> dict:
    margin = np.linspace(0.5, 3.0, 30)
    return healthy_steps(loss=robust(margin), rewards_margins=margin, rewards_chosen=0.5 * margin,
                         rewards_rejected=-0.5 * margin, rewards_accuracies=np.ones(30))


def test_robust_loss_below_zero_obeys_its_bounds():
    findings = findings_of(negative_loss_steps(), loss_type="robust", label_smoothing=0.1, beta=0.1)
    assert "metric-identity-violated" not in codes(findings)


def test_sigmoid_bounds_broken_by_negative_loss():
    findings = findings_of(negative_loss_steps(), loss_type="sigmoid", beta=0.1)
    assert "metric-identity-violated" in codes(findings, "error")


def test_repeated_steps_read_as_resumed_run():
    rows = healthy_steps()
    rows["step"] = np.concatenate([np.arange(1, 21), np.arange(11, 21)])
    duplicate, = [f for f in findings_of(rows) if f.code == "duplicate-steps"]
    assert "occur more than once" in duplicate.message


def test_final_evaluation_logged_twice_is_silent():
    # HF Trainer logs the evaluation that ends training again, at the same step and values.
    evals = {"step": [10, 20, 30, 30], "loss": [0.6, 0.5, 0.45, 0.45],
             "rewards_accuracies": [0.6, 0.7, 0.75, 0.75], "extra_runtime": [53.1, 53.7, 53.7, 53.6]}
    findings = findings_of(with_evals(healthy_steps(), evals))
    assert "duplicate-steps" not in codes(findings)


def test_evaluation_repeated_with_other_values_fires():
    evals = {"step": [10, 20, 30, 30], "loss": [0.6, 0.5, 0.45, 0.47],
             "rewards_accuracies": [0.6, 0.7, 0.75, 0.75], "extra_runtime": [53.1, 53.7, 53.7, 53.6]}
    findings = findings_of(with_evals(healthy_steps(), evals))
    assert "duplicate-steps" in codes(findings)


def test_epoch_restart_read_as_second_run():
    # An SFT run's records, then a DPO run's, in one console capture without step numbers.
    rows = healthy_steps()
    rows["epoch"] = np.concatenate([np.arange(1, 11) / 10, np.arange(1, 21) / 20])
    duplicate, = [f for f in findings_of(rows) if f.code == "duplicate-steps"]
    assert duplicate.title == "The train epoch goes back 1 time(s)"
    assert (duplicate.evidence["epoch_before"], duplicate.evidence["epoch_after"]) == (1.0, 0.05)


def test_rising_epochs_are_silent():
    rows = healthy_steps()
    rows["epoch"] = np.arange(1, 31) / 10
    assert "duplicate-steps" not in codes(findings_of(rows))


def test_reordered_steps_read_as_out_of_order():
    rows = healthy_steps()
    rows["step"] = np.concatenate([np.arange(1, 11), np.arange(21, 31), np.arange(11, 21)])
    duplicate, = [f for f in findings_of(rows) if f.code == "duplicate-steps"]
    assert "out of order" in duplicate.message


def test_nan_message_counts_zero_train_loss():
    # The HF Trainer logs a train loss of 0 for NaN steps; the eval loss is NaN outright.
    rows = healthy_steps()
    nan = np.arange(1, 31) > 20
    for column in ("rewards_chosen", "rewards_rejected", "rewards_margins"):
        rows[column] = np.where(nan, np.nan, rows[column])
    rows["loss"] = np.where(nan, 0.0, rows["loss"])
    evals = {"step": np.array([10, 20, 30]), "loss": np.array([0.6, 0.55, np.nan]),
             "rewards_margins": np.array([0.5, 1.0, np.nan])}
    nonfinite, = [f for f in findings_of(with_evals(rows, evals)) if f.code == "non-finite-values"]
    assert "loss (1, eval)" in nonfinite.message
    assert "exactly 0 at 10 of these records" in nonfinite.message


def margins_rising_to(top: float, loss_of) -> dict:
    """Records from step 11 on, so that none comes before the first update, with margins from
    0.1 to `top` and the loss `loss_of(margin)`."""
    margin = np.linspace(0.1, top, 30)
    return healthy_steps(step=np.arange(11, 41), loss=loss_of(margin), rewards_margins=margin,
                         rewards_chosen=0.5 * margin, rewards_rejected=-0.5 * margin,
                         rewards_accuracies=np.full(30, 0.9))


def test_loss_rising_with_margin_is_not_sigmoid():
    # IPO on summed log-ratios past its target: (m / beta - 1 / (2 beta))^2 grows with m.
    rows = margins_rising_to(3.0, lambda m: (m / 0.1 - 5) ** 2)
    mismatch = [f for f in findings_of(rows, beta=0.1, loss_type="sigmoid") if f.code == "loss-type-mismatch"]
    assert len(mismatch) == 1
    assert "rises with the mean margin" in mismatch[0].message


def test_loss_falling_with_margin_is_sigmoid():
    rows = margins_rising_to(3.0, lambda m: softplus(-m))
    assert "loss-type-mismatch" not in codes(findings_of(rows, beta=0.1, loss_type="sigmoid"))


def test_rising_loss_needs_a_declared_loss():
    rows = margins_rising_to(3.0, lambda m: (m / 0.1 - 5) ** 2)
    assert "loss-type-mismatch" not in codes(findings_of(rows))


def zero_rewards(**drop) -> dict:
    """Rewards exactly 0 at every step; the columns in `drop` are left out."""
    rows = healthy_steps(rewards_chosen=np.zeros(30), rewards_rejected=np.zeros(30),
                         rewards_margins=np.zeros(30), loss=np.full(30, 0.6931))
    return {name: values for name, values in rows.items() if name not in drop}


def tracks_policy_message(rows: dict) -> str:
    (finding,) = [f for f in findings_of(rows) if f.code == "reference-tracks-policy"]
    return finding.message


def test_tracks_policy_names_gradients():
    assert "while gradients flow (grad_norm > 0)." in tracks_policy_message(zero_rewards())


def test_tracks_policy_names_moving_logps():
    message = tracks_policy_message(zero_rewards(grad_norm=True))
    assert "after the first, while the policy's logps/chosen moves over 4.2 nats." in message


def test_tracks_policy_without_evidence_of_updates():
    message = tracks_policy_message(zero_rewards(grad_norm=True, logps_chosen=True, logps_rejected=True))
    assert "grad_norm and the policy log-probs are not logged" in message


def grad_norms(nan_steps: list[int]) -> dict:
    """A healthy run whose grad_norm is NaN at `nan_steps` (1-based)."""
    rows = healthy_steps()
    rows["grad_norm"] = np.where(np.isin(rows["step"], nan_steps), np.nan, rows["grad_norm"])
    return rows


def test_nan_grad_norm_of_skipped_updates_is_silent():
    # fp16 loss scaling skips an overflowed step and logs its grad_norm as NaN.
    assert "non-finite-values" not in codes(findings_of(grad_norms([1, 2, 18])))


def test_nan_grad_norm_to_the_end_fires():
    assert "non-finite-values" in codes(findings_of(grad_norms(list(range(20, 31)))), "error")


def test_nan_loss_beside_nan_grad_norm_fires():
    rows = grad_norms([18])
    rows["loss"] = np.where(rows["step"] == 18, np.nan, rows["loss"])
    assert "non-finite-values" in codes(findings_of(rows), "error")


def test_overfitting_skip_without_loss():
    rows = {name: values for name, values in healthy_steps().items() if name != "loss"}
    (skipped,) = [f for f in findings_of(rows) if f.code == "checks-skipped"]
    assert skipped.evidence["skipped"]["overfitting"] == "the log has no finite loss"
