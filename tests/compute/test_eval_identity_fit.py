"""fit_eval_identity: beta from eval rewards against eval log-probs, and its standard error."""

import numpy as np
import pytest

from dpodiag.compute.identify import fit_eval_identity

BETA = 0.1


def evaluations(logps_step: float, digits: int | None = None):
    """Eval means at 6 evaluations of a fixed set; rounding imitates printed values."""
    k = np.arange(6, dtype=float)
    chosen, rejected = -120.0 + logps_step * k, -130.0 - 2 * logps_step * k
    rewards_chosen, rejected_rewards = BETA * (chosen + 120.0), BETA * (rejected + 130.0)
    values = [chosen, rewards_chosen, rejected, rejected_rewards]
    if digits is not None:
        values = [np.array([float(f"{v:.{digits}g}") for v in column]) for column in values]
    return values


def test_exact_values_recover_beta():
    fit = fit_eval_identity(*evaluations(2.0))
    assert fit.beta == pytest.approx(BETA, rel=1e-9)
    assert fit.beta_stderr < 1e-9


def test_printed_values_that_barely_move_have_large_error():
    # The log-probs move by 0.01 per evaluation, about their 4-digit printing step.
    fit = fit_eval_identity(*evaluations(0.01, digits=4))
    assert fit is None or fit.beta_stderr > 0.02 * fit.beta


def test_printed_values_that_move_have_small_error():
    fit = fit_eval_identity(*evaluations(2.0, digits=4))
    assert fit.beta == pytest.approx(BETA, rel=0.01)
    assert fit.beta_stderr < 0.02 * fit.beta
