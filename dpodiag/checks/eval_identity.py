"""The eval identity of step logs: on a fixed eval set, logps - rewards/beta is the mean
reference log-prob, constant while the reference is frozen; the slope of the fit is beta."""

from __future__ import annotations

from dpodiag.checks.base import Finding, RunData, Skip, require_steps
from dpodiag.compute.identify import EvalIdentityFit, fit_eval_identity

# A frozen reference gives the same log-prob every time up to numerics; 1% of the log-prob
# bounds bf16 noise and batch-composition effects, as at step 0.
FROZEN_RELATIVE_TOLERANCE = 0.01


def eval_identity(data: RunData) -> EvalIdentityFit:
    """Return the fit of eval rewards against eval log-probs (cached). Skip where it cannot hold."""
    if "eval_identity" not in data.cache:
        dialect = data.dialect
        if dialect is not None and not dialect.rewards_beta_scaled:
            raise Skip("rewards are not beta-scaled in this dialect")
        if dialect is not None and dialect.reference_free:
            raise Skip("rewards are beta * policy log-probs: there is no reference to drift")
        rows = require_steps(data, "eval", ["rewards_chosen", "logps_chosen", "rewards_rejected",
                                            "logps_rejected"], 3)
        data.cache["eval_identity"] = fit_eval_identity(
            *(rows.get_column(c).to_numpy() for c in ("logps_chosen", "rewards_chosen",
                                                      "logps_rejected", "rewards_rejected")))
        data.cache["eval_identity_rows"] = rows.height
    if data.cache["eval_identity"] is None:
        raise Skip("eval rewards do not grow with eval log-probs, so beta cannot be fitted")
    return data.cache["eval_identity"]


def eval_identity_holds(fit: EvalIdentityFit) -> bool:
    """True when the implied reference stays within numerics (1% of its size, at least 1e-3)."""
    return fit.drift <= max(1e-3, FROZEN_RELATIVE_TOLERANCE * fit.scale)


def beta_from_eval_identity(data: RunData) -> list[Finding]:
    """Step logs: the slope of eval rewards against eval log-probs is beta."""
    declared = data.run.meta.beta
    if declared is None or data.run.meta.source_of("beta") in ("inferred", "default"):
        raise Skip("beta is not declared")
    fit = eval_identity(data)
    if not eval_identity_holds(fit) or abs(fit.beta / declared - 1) < 0.05:
        return []
    return [data.finding(
        "beta-mismatch", f"The logged rewards use beta {fit.beta:.3g}, not {declared:g}",
        f"On the eval set, rewards = beta * (logps - reference) holds exactly with beta "
        f"{fit.beta:.4g} (implied reference constant to {fit.drift:.2g} nats), not with the "
        f"recorded {declared:g}. The rewards were scaled with another beta than the one recorded.",
        split="eval", evidence={"declared_beta": declared, "fitted_beta": fit.beta, "drift": fit.drift})]
