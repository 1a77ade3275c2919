"""Per-pair losses of the DPO family, one pure function per variant, and their registry.

Each loss takes a `PairBatch` and the run's hyper-parameters and returns one loss per pair,
shape ``[N]``, in nats. Notation as in `dpodiag.compute.rewards`; h = rho_w - rho_l, eps is the
label smoothing, a bar is a per-token average (summed log-prob divided by the response length).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


@dataclass
class PairBatch:
    """Tensors of one batch of pairs, all of shape ``[N]`` on one device."""

    chosen_logratio: torch.Tensor | None
    rejected_logratio: torch.Tensor | None
    policy_chosen_logps: torch.Tensor | None = None
    policy_rejected_logps: torch.Tensor | None = None
    chosen_length: torch.Tensor | None = None
    rejected_length: torch.Tensor | None = None
    per_token: bool = False
    """True when the log-probs are already per-token averages, so a bar is the value itself."""

    def average(self, value: torch.Tensor, length: torch.Tensor | None) -> torch.Tensor:
        """Per-token average of a summed quantity; the value itself when no length is known."""
        if self.per_token or length is None:
            return value
        return value / length

    @property
    def h(self) -> torch.Tensor:
        return self.chosen_logratio - self.rejected_logratio

    @property
    def h_bar(self) -> torch.Tensor:
        return (self.average(self.chosen_logratio, self.chosen_length)
                - self.average(self.rejected_logratio, self.rejected_length))


def sigmoid_loss(batch: PairBatch, beta: float, **_) -> torch.Tensor:
    r"""DPO: :math:`\mathrm{softplus}(-\beta h)`."""
    return F.softplus(-beta * batch.h)


def cdpo_loss(batch: PairBatch, beta: float, label_smoothing: float = 0.0, **_) -> torch.Tensor:
    r"""Conservative DPO: :math:`(1-\epsilon)\,\mathrm{softplus}(-\beta h) + \epsilon\,\mathrm{softplus}(\beta h)`."""
    z = beta * batch.h
    return (1 - label_smoothing) * F.softplus(-z) + label_smoothing * F.softplus(z)


def robust_loss(batch: PairBatch, beta: float, label_smoothing: float = 0.0, **_) -> torch.Tensor:
    r"""Robust DPO: :math:`[(1-\epsilon)\,\mathrm{softplus}(-\beta h) - \epsilon\,\mathrm{softplus}(\beta h)] / (1-2\epsilon)`."""
    z = beta * batch.h
    eps = label_smoothing
    return ((1 - eps) * F.softplus(-z) - eps * F.softplus(z)) / (1 - 2 * eps)


def hinge_loss(batch: PairBatch, beta: float, **_) -> torch.Tensor:
    r"""SLiC / RSO hinge: :math:`\max(0, 1 - \beta h)`."""
    return torch.relu(1 - beta * batch.h)


def ipo_loss(batch: PairBatch, beta: float, **_) -> torch.Tensor:
    r"""IPO: :math:`(\bar h - 1/(2\beta))^2` on per-token averaged log-ratios.

    Without lengths, :math:`\bar h = h` (IPO on summed log-ratios, as OpenRLHF computes it).
    """
    return (batch.h_bar - 1 / (2 * beta)) ** 2


def sigmoid_norm_loss(batch: PairBatch, beta: float, **_) -> torch.Tensor:
    r"""Length-normalised DPO: :math:`\mathrm{softplus}(-\beta(\rho_w/|y_w| - \rho_l/|y_l|))`."""
    return F.softplus(-beta * batch.h_bar)


def exo_pair_loss(batch: PairBatch, beta: float, label_smoothing: float = 1e-3, **_) -> torch.Tensor:
    r"""EXO: :math:`q(\log q - \log(1-\epsilon)) + (1-q)(\log(1-q) - \log\epsilon)`, :math:`q = \sigma(\beta h)`.

    eps = 0 is replaced by 1e-3, as TRL up to 0.28 did.
    """
    eps = label_smoothing or 1e-3
    z = beta * batch.h
    q = torch.sigmoid(z)
    log_q, log_not_q = F.logsigmoid(z), F.logsigmoid(-z)
    return q * (log_q - math.log(1 - eps)) + (1 - q) * (log_not_q - math.log(eps))


def nca_pair_loss(batch: PairBatch, beta: float, **_) -> torch.Tensor:
    r"""NCA: :math:`\mathrm{softplus}(-\beta\rho_w) + \tfrac12\mathrm{softplus}(\beta\rho_w) + \tfrac12\mathrm{softplus}(\beta\rho_l)`."""
    zw, zl = beta * batch.chosen_logratio, beta * batch.rejected_logratio
    return F.softplus(-zw) + 0.5 * F.softplus(zw) + 0.5 * F.softplus(zl)


def bco_pair_loss(batch: PairBatch, beta: float, **_) -> torch.Tensor:
    r"""BCO (paired, no running shift): :math:`\mathrm{softplus}(-\beta\rho_w) + \mathrm{softplus}(\beta\rho_l)`."""
    return F.softplus(-beta * batch.chosen_logratio) + F.softplus(beta * batch.rejected_logratio)


def sppo_hard_loss(batch: PairBatch, beta: float, **_) -> torch.Tensor:
    r"""Hard-label SPPO: :math:`(\rho_w - 1/(2\beta))^2 + (\rho_l + 1/(2\beta))^2`."""
    target = 1 / (2 * beta)
    return (batch.chosen_logratio - target) ** 2 + (batch.rejected_logratio + target) ** 2


def apo_zero_loss(batch: PairBatch, beta: float, **_) -> torch.Tensor:
    r"""APO-zero: :math:`(1 - \sigma(\beta\rho_w)) + \sigma(\beta\rho_l)`."""
    return (1 - torch.sigmoid(beta * batch.chosen_logratio)) + torch.sigmoid(beta * batch.rejected_logratio)


def apo_down_loss(batch: PairBatch, beta: float, **_) -> torch.Tensor:
    r"""APO-down: :math:`\sigma(\beta\rho_w) + (1 - \sigma(\beta h))`."""
    return torch.sigmoid(beta * batch.chosen_logratio) + (1 - torch.sigmoid(beta * batch.h))


def discopop_loss(batch: PairBatch, beta: float, discopop_tau: float = 0.05, **_) -> torch.Tensor:
    r"""DiscoPOP: with :math:`z = \beta h`, :math:`k = \sigma(z/\tau)`: :math:`(1-k)\,\mathrm{softplus}(-z) + k\,e^{-z}`."""
    z = beta * batch.h
    k = torch.sigmoid(z / discopop_tau)
    return (1 - k) * F.softplus(-z) + k * torch.exp(-z)


def simpo_loss(batch: PairBatch, beta: float, simpo_gamma: float | None = 0.5, **_) -> torch.Tensor:
    r"""SimPO (reference-free): :math:`\mathrm{softplus}(-(\beta(\bar c - \bar r) - \gamma))`."""
    gamma = 0.5 if simpo_gamma is None else simpo_gamma
    c_bar = batch.average(batch.policy_chosen_logps, batch.chosen_length)
    r_bar = batch.average(batch.policy_rejected_logps, batch.rejected_length)
    return F.softplus(-(beta * (c_bar - r_bar) - gamma))


def cpo_loss(batch: PairBatch, beta: float, label_smoothing: float = 0.0, **_) -> torch.Tensor:
    r"""CPO preference term (reference-free, NLL term excluded): :math:`\mathrm{softplus}(-\beta(c - r))`, cDPO-smoothed by eps."""
    z = beta * (batch.policy_chosen_logps - batch.policy_rejected_logps)
    return (1 - label_smoothing) * F.softplus(-z) + label_smoothing * F.softplus(z)


def orpo_loss(batch: PairBatch, beta: float, **_) -> torch.Tensor:
    r"""ORPO (reference-free): :math:`-\bar c - \beta \log\sigma(\ell)` with the log-odds ratio
    :math:`\ell = (\bar c - \bar r) - (\log(1 - e^{\bar c}) - \log(1 - e^{\bar r}))`.

    The first term is the chosen response's per-token NLL, which a pair log carries as -c_bar.
    """
    c_bar = batch.average(batch.policy_chosen_logps, batch.chosen_length)
    r_bar = batch.average(batch.policy_rejected_logps, batch.rejected_length)
    log_odds = (c_bar - r_bar) - (torch.log1p(-torch.exp(c_bar)) - torch.log1p(-torch.exp(r_bar)))
    return -c_bar - beta * F.logsigmoid(log_odds)


@dataclass(frozen=True)
class LossSpec:
    """A loss variant: its function, its value at zero margin and what it needs."""

    name: str
    fn: Callable[..., torch.Tensor]
    zero_margin: Callable[[float, float], float] | None
    """(beta, eps) -> the per-pair loss when policy == reference; None for reference-free losses."""
    needs_reference: bool = True
    convex_in_margin: bool = True
    """True when the loss is g(beta*h) for a convex g, so mean loss >= g(mean margin)."""
    per_token_margin: bool = False
    """True when the loss's reward margin is beta times per-token averages (SimPO)."""
    option: str | None = None
    """The setting besides beta that shapes the loss ("label_smoothing", "simpo_gamma"), which a
    fit of the logged loss searches as well."""


def _exo_zero_margin(beta: float, eps: float) -> float:
    eps = eps or 1e-3
    return -LN2 - 0.5 * math.log(eps * (1 - eps))


LOSSES: dict[str, LossSpec] = {spec.name: spec for spec in [
    LossSpec("sigmoid", sigmoid_loss, lambda beta, eps: LN2),
    LossSpec("cdpo", cdpo_loss, lambda beta, eps: LN2, option="label_smoothing"),
    LossSpec("robust", robust_loss, lambda beta, eps: LN2, option="label_smoothing"),
    LossSpec("hinge", hinge_loss, lambda beta, eps: 1.0),
    LossSpec("ipo", ipo_loss, lambda beta, eps: 1 / (4 * beta ** 2)),
    LossSpec("sigmoid_norm", sigmoid_norm_loss, lambda beta, eps: LN2),
    LossSpec("exo_pair", exo_pair_loss, _exo_zero_margin),
    LossSpec("nca_pair", nca_pair_loss, lambda beta, eps: 2 * LN2, convex_in_margin=False),
    LossSpec("bco_pair", bco_pair_loss, lambda beta, eps: 2 * LN2, convex_in_margin=False),
    LossSpec("sppo_hard", sppo_hard_loss, lambda beta, eps: 1 / (2 * beta ** 2), convex_in_margin=False),
    LossSpec("apo_zero", apo_zero_loss, lambda beta, eps: 1.0, convex_in_margin=False),
    LossSpec("apo_down", apo_down_loss, lambda beta, eps: 1.0, convex_in_margin=False),
    LossSpec("discopop", discopop_loss, lambda beta, eps: 0.5 * LN2 + 0.5, convex_in_margin=False),
    LossSpec("simpo", simpo_loss, None, needs_reference=False, convex_in_margin=False,
             per_token_margin=True, option="simpo_gamma"),
    LossSpec("cpo", cpo_loss, None, needs_reference=False, convex_in_margin=False,
             option="label_smoothing"),
    LossSpec("orpo", orpo_loss, None, needs_reference=False, convex_in_margin=False,
             per_token_margin=True),
]}
