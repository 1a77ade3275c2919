"""Reward, probability and weight functions against slow plain-Python references."""

import math

import numpy as np
import pytest
import torch

from dpodiag.compute import rewards


@pytest.fixture
def pairs():
    rng = np.random.default_rng(1)
    n = 200
    return {name: rng.normal(loc, 4, n) for name, loc in
            [("c", -20), ("r", -22), ("c0", -20), ("r0", -21)]}


def t(values):
    return torch.tensor(values, dtype=torch.float64)


def test_log_ratio_and_margin(pairs):
    beta = 0.1
    rho_w = rewards.log_ratio(t(pairs["c"]), t(pairs["c0"]))
    rho_l = rewards.log_ratio(t(pairs["r"]), t(pairs["r0"]))
    margin = rewards.reward_margin(rho_w, rho_l, beta).numpy()
    want = [beta * ((c - c0) - (r - r0)) for c, r, c0, r0 in
            zip(pairs["c"], pairs["r"], pairs["c0"], pairs["r0"])]
    np.testing.assert_allclose(margin, want, rtol=1e-12)


def test_probability_and_weight_sum_to_one(pairs):
    margin = t(pairs["c"] - pairs["r"]) * 0.3
    p = rewards.bradley_terry_probability(margin).numpy()
    w = rewards.gradient_weight(margin).numpy()
    np.testing.assert_allclose(p, [1 / (1 + math.exp(-m)) for m in margin.tolist()], rtol=1e-12)
    np.testing.assert_allclose(p + w, 1.0, rtol=1e-12)


def test_weight_is_half_at_zero_margin():
    assert rewards.gradient_weight(torch.zeros(3)).tolist() == [0.5, 0.5, 0.5]


def test_effective_sample_size(pairs):
    w = np.abs(pairs["c"]) / 100
    want = sum(w) ** 2 / sum(x * x for x in w)
    assert rewards.effective_sample_size(t(w)).item() == pytest.approx(want, rel=1e-12)


def test_effective_sample_size_edge_cases():
    assert rewards.effective_sample_size(torch.zeros(4)).item() == 0.0
    assert rewards.effective_sample_size(torch.ones(7)).item() == pytest.approx(7.0)


def test_reward_accuracy_counts_ties_as_wrong():
    assert rewards.reward_accuracy(t([1.0, 0.0, -1.0, 2.0])).item() == 0.5
    assert rewards.reward_accuracy(torch.zeros(5, dtype=torch.float64)).item() == 0.0


def test_ranking_accuracy(pairs):
    want = sum(c > r for c, r in zip(pairs["c"], pairs["r"])) / len(pairs["c"])
    assert rewards.ranking_accuracy(t(pairs["c"]), t(pairs["r"])).item() == pytest.approx(want)
