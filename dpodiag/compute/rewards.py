"""Implicit rewards, margins, Bradley–Terry probabilities and gradient weights.

Every function is pure and works elementwise on tensors of one shape ``[N]`` (one value per
preference pair), except the reductions, which return a 0-dim float64 tensor.
Notation: c, r are the policy's sequence log-probs of the chosen and rejected response, c0, r0
the reference's; rho_w = c - c0 and rho_l = r - r0 are the log-ratios.
"""

from __future__ import annotations

import torch


def log_ratio(policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> torch.Tensor:
    r"""Log-ratio of policy to reference, :math:`\rho = \log\pi_\theta(y|x) - \log\pi_{ref}(y|x)`."""
    return policy_logps - reference_logps


def reward_margin(chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor,
                  beta: torch.Tensor | float) -> torch.Tensor:
    r"""Implicit reward margin :math:`m = \beta (\rho_w - \rho_l)` in nats."""
    return beta * (chosen_logratio - rejected_logratio)


def bradley_terry_probability(margin: torch.Tensor) -> torch.Tensor:
    r"""Probability that the chosen response is preferred, :math:`p = \sigma(m)`."""
    return torch.sigmoid(margin)


def gradient_weight(margin: torch.Tensor) -> torch.Tensor:
    r"""Per-pair weight of the DPO gradient, :math:`w = \sigma(-m)`: 0.5 at the start, 0 once separated."""
    return torch.sigmoid(-margin)


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    r"""Effective sample size :math:`(\sum_i w_i)^2 / \sum_i w_i^2` of non-negative weights.

    Returns 0 when every weight is 0. Accumulates in float64.
    """
    w = weights.to(torch.float64)
    denominator = (w * w).sum()
    if denominator == 0:
        return torch.zeros((), dtype=torch.float64, device=w.device)
    return w.sum() ** 2 / denominator


def reward_accuracy(margin: torch.Tensor) -> torch.Tensor:
    r"""Share of pairs with :math:`m > 0`; ties count as wrong, as TRL logs it."""
    return (margin > 0).to(torch.float64).mean()


def ranking_accuracy(policy_chosen_logps: torch.Tensor,
                     policy_rejected_logps: torch.Tensor) -> torch.Tensor:
    r"""Share of pairs the policy itself ranks correctly, :math:`c > r` (ties count as wrong)."""
    return (policy_chosen_logps > policy_rejected_logps).to(torch.float64).mean()
