"""rank-local-metrics against the batch that, by the trainer's settings, each record averages."""

from __future__ import annotations

import numpy as np
import pytest

import dpodiag
from cases import healthy_steps, step_run
from dpodiag.checks.identities import configured_pairs_per_record
from synthetic import codes


def quarter_accuracies(seed: int = 0) -> dict:
    """A step log whose train accuracies are multiples of 1/4 that keep changing."""
    rng = np.random.default_rng(seed)
    return healthy_steps(rewards_accuracies=rng.integers(0, 5, 30) / 4)


def findings(rows: dict, config: dict, dialect: str = "trl") -> dpodiag.Diagnosis:
    run = step_run(rows, dialect=dialect)
    run.meta.trainer_config = config
    return dpodiag.diagnose([run], device="cpu")


def skipped(diagnosis: dpodiag.Diagnosis) -> dict:
    notes = [f for f in diagnosis.findings if f.code == "checks-skipped"]
    return notes[0].evidence["skipped"] if notes else {}


def test_fires_without_trainer_settings():
    assert "rank-local-metrics" in codes(findings(quarter_accuracies(), {}).findings)


@pytest.mark.parametrize("config", [
    {"per_device_train_batch_size": 4, "logging_steps": 1},
    {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "logging_steps": 1},
    {"train_batch_size": 4, "logging_steps": 1},
])
def test_skips_when_batch_explains_grid(config):
    diagnosis = findings(quarter_accuracies(), config)
    assert "rank-local-metrics" not in codes(diagnosis.findings)
    assert "averages 4 pair(s)" in skipped(diagnosis)["rank-local-metrics"]


@pytest.mark.parametrize("config", [
    # 16 pairs per record would give a 1/16 grid, not 1/4.
    {"per_device_train_batch_size": 16, "logging_steps": 1},
    {"per_device_train_batch_size": 4, "logging_steps": 10},
    # A float logging_steps is a share of the run: the averaged count is unknown.
    {"per_device_train_batch_size": 4, "logging_steps": 0.01},
    {"logging_steps": 1},
])
def test_fires_when_batch_does_not_explain(config):
    assert "rank-local-metrics" in codes(findings(quarter_accuracies(), config).findings)


def test_fires_for_legacy_trl_with_small_batch():
    config = {"per_device_train_batch_size": 4, "logging_steps": 1}
    diagnosis = findings(quarter_accuracies(), config, dialect="trl-legacy")
    assert "rank-local-metrics" in codes(diagnosis.findings)


def test_configured_pairs_product():
    config = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 3, "logging_steps": 5,
              "train_batch_size": 7}
    pairs, settings = configured_pairs_per_record(config)
    assert pairs == 30
    assert "per_device_train_batch_size 2" in settings
    assert configured_pairs_per_record({"per_device_train_batch_size": True, "logging_steps": 1}) == (None, "")


def test_batch_of_one_titled_zero_or_one():
    rng = np.random.default_rng(0)
    rows = healthy_steps(rewards_accuracies=rng.integers(0, 2, 30).astype(float))
    (finding,) = [f for f in findings(rows, {}).findings if f.code == "rank-local-metrics"]
    assert finding.title == "Accuracies are only 0 or 1"
    assert "multiples of 1/1" not in finding.message


def test_fires_with_a_few_values_off_the_grid():
    # 2 of 40 records average several windows and fall between the quarters.
    rng = np.random.default_rng(1)
    accuracies = rng.integers(0, 5, 40) / 4
    accuracies[[10, 30]] = [19 / 32, 21 / 32]
    rows = healthy_steps(40, rewards_accuracies=accuracies)
    (finding,) = [f for f in findings(rows, {}).findings if f.code == "rank-local-metrics"]
    assert finding.message.startswith("38 of 40 train accuracies are multiples of 1/4")
