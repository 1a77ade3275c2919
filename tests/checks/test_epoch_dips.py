"""loss-scale-mismatch in its step-log form: the loss dips at every epoch end."""

from __future__ import annotations

import numpy as np
import pytest

import dpodiag
from cases import healthy_steps, step_run
from dpodiag.checks.epoch_dips import epoch_end_indices, neighbour_ratios
from synthetic import codes

STEPS_PER_EPOCH = 40
EPOCHS = 3


def noisy_run(seed: int = 0, **overrides) -> dict:
    """A healthy TRL step log over 3 epochs, logged every step, with noise on the loss."""
    rng = np.random.default_rng(seed)
    n = STEPS_PER_EPOCH * EPOCHS
    rows = healthy_steps(n)
    rows["loss"] = np.round(np.asarray(rows["loss"]) * rng.normal(1.0, 0.04, n), 4)
    rows["epoch"] = np.arange(1, n + 1) / STEPS_PER_EPOCH
    rows.update(overrides)
    return rows


def diagnose(rows: dict, **meta) -> set[str]:
    return codes(dpodiag.diagnose([step_run(rows, **meta)], device="cpu").findings)


def epoch_end_positions() -> list[int]:
    return [STEPS_PER_EPOCH * k - 1 for k in range(1, EPOCHS + 1)]


def test_dip_at_every_epoch_end_fires():
    # 8 micro-batches per window, 2 left in the last one: the loss is logged at 2/8.
    rows = noisy_run()
    loss = np.asarray(rows["loss"], dtype=float)
    loss[epoch_end_positions()] *= 0.25
    rows["loss"] = loss
    diagnosis = dpodiag.diagnose([step_run(rows, gradient_accumulation_steps=8)], device="cpu")
    (finding,) = [f for f in diagnosis.findings if f.code == "loss-scale-mismatch"]
    assert finding.evidence["form"] == "epoch-end dips"
    assert finding.evidence["epoch_end_steps"] == [40, 80, 120]
    assert all(ratio == pytest.approx(0.25, abs=0.05) for ratio in finding.evidence["ratios"])
    assert "at every epoch end" in finding.title


def test_noisy_healthy_run_is_silent():
    for seed in range(20):
        assert "loss-scale-mismatch" not in diagnose(noisy_run(seed)), seed


def test_drop_after_epoch_start_is_silent():
    # Memorisation: the loss falls when the data repeats and stays low for the whole epoch.
    rows = noisy_run()
    loss = np.asarray(rows["loss"], dtype=float)
    epoch = np.asarray(rows["epoch"])
    loss *= np.where(epoch > 1.0, 0.6, 1.0) * np.where(epoch > 2.0, 0.6, 1.0)
    rows["loss"] = loss
    assert "loss-scale-mismatch" not in diagnose(rows)


def test_dip_at_one_epoch_end_only_is_silent():
    rows = noisy_run()
    loss = np.asarray(rows["loss"], dtype=float)
    loss[epoch_end_positions()[0]] *= 0.25
    rows["loss"] = loss
    assert "loss-scale-mismatch" not in diagnose(rows)


def test_epoch_ends_with_logging_window():
    # Logged every 3 steps over 40-step epochs: the window that contains step 40 ends at 42.
    epoch = np.arange(3, 121, 3) / 40
    assert [round(float(epoch[i]), 3) for i in epoch_end_indices(epoch)] == [1.05, 2.025, 3.0]


def test_neighbour_ratios_against_loop():
    rng = np.random.default_rng(1)
    loss = rng.uniform(0.2, 1.0, 50)
    ratios = neighbour_ratios(loss, window=5)
    for i in range(50):
        before, after = loss[max(0, i - 5):i], loss[i + 1:i + 6]
        medians = [np.median(side) for side in (before, after) if len(side)]
        assert ratios[i] == pytest.approx(loss[i] / min(medians))


def short_epochs(seed: int = 0, dip: float = 1.0) -> dict:
    """A 30-record log of epochs of 3 records each, whose epoch-end loss is `dip` x the others."""
    rng = np.random.default_rng(seed)
    rows = healthy_steps(30)
    loss = np.asarray(rows["loss"], dtype=float) * rng.normal(1.0, 0.02, 30)
    epoch = np.arange(1, 31) / 3.2
    ends = epoch_end_indices(epoch)
    loss[ends] *= dip
    rows.update(loss=np.round(loss, 4), epoch=epoch)
    return rows


def test_dips_in_short_epochs_fire():
    # A loss summed over 4 micro-batches, with one micro-batch in each epoch's last window.
    assert "loss-scale-mismatch" in diagnose(short_epochs(dip=0.25))


def test_short_epochs_without_dips_are_silent():
    for seed in range(20):
        assert "loss-scale-mismatch" not in diagnose(short_epochs(seed)), seed
