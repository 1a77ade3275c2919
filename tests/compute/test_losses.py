"""Every loss variant against a slow plain-Python reference, and at the zero margin."""

import math

import numpy as np
import pytest
import torch

from dpodiag.compute.loss_names import PAIRED_LOSS_TYPES, canonical_loss_type
from dpodiag.compute.losses import LOSSES, PairBatch


def softplus(x):
    # log(1 + e^x), written to stay finite for large |x|.
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def reference_loss(name, rw, rl, c, r, lw, ll, beta, eps, gamma):
    """The per-pair loss of design.md's table, one pair at a time."""
    h = rw - rl
    z = beta * h
    h_bar = rw / lw - rl / ll
    if name == "sigmoid":
        return softplus(-z)
    if name == "cdpo":
        return (1 - eps) * softplus(-z) + eps * softplus(z)
    if name == "robust":
        return ((1 - eps) * softplus(-z) - eps * softplus(z)) / (1 - 2 * eps)
    if name == "hinge":
        return max(0.0, 1 - z)
    if name == "ipo":
        return (h_bar - 1 / (2 * beta)) ** 2
    if name == "sigmoid_norm":
        return softplus(-beta * h_bar)
    if name == "exo_pair":
        e = eps or 1e-3
        q = sigmoid(z)
        return q * (math.log(q) - math.log(1 - e)) + (1 - q) * (math.log(1 - q) - math.log(e))
    if name == "nca_pair":
        return softplus(-beta * rw) + 0.5 * softplus(beta * rw) + 0.5 * softplus(beta * rl)
    if name == "bco_pair":
        return softplus(-beta * rw) + softplus(beta * rl)
    if name == "sppo_hard":
        return (rw - 1 / (2 * beta)) ** 2 + (rl + 1 / (2 * beta)) ** 2
    if name == "apo_zero":
        return (1 - sigmoid(beta * rw)) + sigmoid(beta * rl)
    if name == "apo_down":
        return sigmoid(beta * rw) + (1 - sigmoid(z))
    if name == "discopop":
        k = sigmoid(z / 0.05)
        return (1 - k) * softplus(-z) + k * math.exp(-z)
    if name == "simpo":
        return softplus(-(beta * (c / lw - r / ll) - gamma))
    if name == "cpo":
        return (1 - eps) * softplus(-beta * (c - r)) + eps * softplus(beta * (c - r))
    if name == "orpo":
        cb, rb = c / lw, r / ll
        log_odds = (cb - rb) - (math.log(1 - math.exp(cb)) - math.log(1 - math.exp(rb)))
        return -cb + beta * softplus(-log_odds)
    raise AssertionError(f"no reference for {name}")


def random_batch(n=64, seed=0):
    rng = np.random.default_rng(seed)
    c0, r0 = rng.normal(-30, 5, n), rng.normal(-32, 5, n)
    rw, rl = rng.normal(0, 3, n), rng.normal(-1, 3, n)
    lw, ll = rng.integers(5, 60, n).astype(float), rng.integers(5, 60, n).astype(float)
    return c0 + rw, r0 + rl, rw, rl, lw, ll


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.1), (2.0, 0.25)])
def test_loss_matches_reference(name, beta, eps):
    c, r, rw, rl, lw, ll = random_batch()
    t = lambda a: torch.tensor(a, dtype=torch.float64)
    batch = PairBatch(t(rw), t(rl), t(c), t(r), t(lw), t(ll))
    got = LOSSES[name].fn(batch, beta, label_smoothing=eps, simpo_gamma=0.5).numpy()
    want = [reference_loss(name, *values, beta, eps, 0.5) for values in zip(rw, rl, c, r, lw, ll)]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", [n for n, spec in LOSSES.items() if spec.zero_margin is not None])
@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.2, 0.1)])
def test_zero_margin_value(name, beta, eps):
    zeros = torch.zeros(8, dtype=torch.float64)
    lengths = torch.full((8,), 10.0, dtype=torch.float64)
    batch = PairBatch(zeros, zeros, zeros - 5, zeros - 6, lengths, lengths)
    got = LOSSES[name].fn(batch, beta, label_smoothing=eps)
    assert torch.allclose(got, torch.full_like(got, LOSSES[name].zero_margin(beta, eps)), atol=1e-12)


def test_zero_margin_known_values():
    # Values quoted for TRL's defaults: ln 2, 25 for IPO at beta 0.1, 2.7612 for EXO at eps 1e-3.
    assert LOSSES["sigmoid"].zero_margin(0.1, 0.0) == pytest.approx(0.693147, abs=1e-6)
    assert LOSSES["ipo"].zero_margin(0.1, 0.0) == pytest.approx(25.0)
    assert LOSSES["exo_pair"].zero_margin(0.1, 1e-3) == pytest.approx(2.7612, abs=1e-4)
    assert LOSSES["discopop"].zero_margin(0.1, 0.0) == pytest.approx(0.8466, abs=1e-4)


def test_ipo_without_lengths_uses_summed_ratios():
    rw, rl = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 0.5], dtype=torch.float64)
    got = LOSSES["ipo"].fn(PairBatch(rw, rl), 0.1)
    assert torch.allclose(got, (rw - rl - 5.0) ** 2)


def test_per_token_logps_are_not_divided_again():
    c, r = torch.tensor([-1.0]), torch.tensor([-2.0])
    lengths = torch.tensor([10.0])
    batch = PairBatch(c, r, c, r, lengths, lengths, per_token=True)
    assert LOSSES["simpo"].fn(batch, 2.0, simpo_gamma=0.5).item() == pytest.approx(softplus(-(2.0 - 0.5)))


@pytest.mark.parametrize("name,expected", [("DPO", "sigmoid"), ("Sigmoid", "sigmoid"), ("slic", "hinge"),
                                           ("dpo_norm", "sigmoid_norm"), ("unknown", None), (None, None)])
def test_canonical_loss_type(name, expected):
    assert canonical_loss_type(name) == expected


def test_loss_names_match_registry_order():
    assert tuple(LOSSES) == PAIRED_LOSS_TYPES
