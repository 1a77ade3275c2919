"""Unpaired (KTO) logs: the loss against a slow reference, reading, and the checks that apply."""

import math

import numpy as np
import polars as pl
import pytest
import torch

import dpodiag
from dpodiag.compute.kto import KTO_ZERO_MARGIN, kto_loss
from synthetic import codes


def slow_kto(rho, desirable, beta, z0):
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    return [(1 - sigmoid(beta * (r - z))) if d else (1 - sigmoid(beta * (z - r)))
            for r, d, z in zip(rho, desirable, z0)]


def test_kto_loss_matches_reference():
    rng = np.random.default_rng(0)
    rho, z0 = rng.normal(0, 3, 100), np.abs(rng.normal(0, 1, 100))
    desirable = rng.integers(0, 2, 100).astype(bool)
    got = kto_loss(torch.tensor(rho), torch.tensor(desirable), 0.2, torch.tensor(z0)).numpy()
    np.testing.assert_allclose(got, slow_kto(rho, desirable, 0.2, z0), rtol=1e-12)


def test_kto_zero_margin():
    got = kto_loss(torch.zeros(4, dtype=torch.float64), torch.tensor([True, False, True, False]), 0.1)
    assert torch.allclose(got, torch.full((4,), KTO_ZERO_MARGIN, dtype=torch.float64))


def unpaired_log(path, beta_in_loss=0.1, steps=12, n=16, nan_step=None):
    rng = np.random.default_rng(1)
    rows = []
    for step in range(steps):
        desirable = np.arange(n) % 2 == 0
        reference = rng.normal(-40, 5, n)
        rho = np.where(desirable, 0.2 * step, -0.4 * step) + rng.normal(0, 0.1, n) * (step > 0)
        loss = slow_kto(rho, desirable, beta_in_loss, np.zeros(n))
        policy = reference + rho
        if step == nan_step:
            policy[:] = np.nan
            loss = [float("nan")] * n
        rows.append(pl.DataFrame({"step": [step] * n, "policy_logps": policy, "reference_logps": reference,
                                  "desirable": desirable, "loss": loss}))
    pl.concat(rows).write_parquet(path)
    return path


@pytest.mark.parametrize(("given", "read"), [("valid", "eval"), ("Evaluation", "eval"), ("training", "train"),
                                             ("holdout", "holdout")])
def test_unpaired_split_names_follow_pair_logs(tmp_path, given, read):
    path = unpaired_log(tmp_path / "kto.parquet")
    pl.read_parquet(path).with_columns(pl.lit(given).alias("split")).write_parquet(path)
    run = dpodiag.load(path, flags={"beta": 0.1})[0]
    assert run.table.get_column("split").unique().to_list() == [read]


def test_unpaired_log_is_read_and_checked(tmp_path):
    runs = dpodiag.load(unpaired_log(tmp_path / "kto.parquet"), flags={"beta": 0.1})
    assert runs[0].level == "unpaired"
    diagnosis = dpodiag.diagnose(runs)
    assert codes(diagnosis.findings, "error") == set()
    steps = diagnosis.runs[0].steps
    assert steps["rewards_margins"][-1] == pytest.approx(0.1 * (0.2 * 11 + 0.4 * 11), rel=0.05)


def test_unpaired_loss_mismatch_fires(tmp_path):
    runs = dpodiag.load(unpaired_log(tmp_path / "kto.parquet", beta_in_loss=0.5), flags={"beta": 0.1})
    assert "loss-mismatch" in codes(dpodiag.diagnose(runs).findings, "error")


def test_unpaired_nan_step_fires(tmp_path):
    runs = dpodiag.load(unpaired_log(tmp_path / "kto.parquet", nan_step=6), flags={"beta": 0.1})
    findings = dpodiag.diagnose(runs).findings
    (finding,) = [f for f in findings if f.code == "non-finite-values"]
    assert finding.step == 6
