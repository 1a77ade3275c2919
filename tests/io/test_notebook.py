"""Jupyter notebooks saved after real TRL training (tests/fixtures/notebooks/generate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

import dpodiag
from dpodiag.errors import InputError, NoDataError
from dpodiag.io.steplogs import read_step_log, sniff_step_log
from dpodiag.io.steplogs.notebook import _key
from synthetic import codes

NOTEBOOKS = Path(__file__).resolve().parents[1] / "fixtures" / "notebooks"
TABLE = NOTEBOOKS / "trl-dpo-progress-table.ipynb"
PRINTED = NOTEBOOKS / "trl-dpo-printed-dicts.ipynb"
METRICS = {"rewards_chosen": "rewards/chosen", "rewards_rejected": "rewards/rejected",
           "rewards_margins": "rewards/margins", "rewards_accuracies": "rewards/accuracies",
           "logps_chosen": "logps/chosen", "logps_rejected": "logps/rejected"}


def log_history(notebook: Path) -> list[dict]:
    return json.loads(notebook.with_suffix(".log_history.json").read_text())


def rows(run, split: str) -> pl.DataFrame:
    return run.table.filter(pl.col("split") == split).sort("step")


def test_sniffed_by_content_and_name():
    assert sniff_step_log(TABLE) == "notebook"
    assert sniff_step_log(PRINTED) == "notebook"


def test_progress_table_eval_rows_match_trainer():
    run = read_step_log(TABLE)
    evals = rows(run, "eval")
    logged = [entry for entry in log_history(TABLE) if "eval_loss" in entry]
    assert evals.get_column("step").to_list() == [entry["step"] for entry in logged]
    # The table prints 6 decimals.
    assert evals.get_column("loss").to_list() == pytest.approx(
        [entry["eval_loss"] for entry in logged], abs=5e-7)
    for column, key in METRICS.items():
        assert evals.get_column(column).to_list() == pytest.approx(
            [entry[f"eval_{key}"] for entry in logged], abs=5e-7), column


def test_progress_table_train_loss_is_last_logged():
    run = read_step_log(TABLE)
    train = rows(run, "train")
    losses = {entry["step"]: entry["loss"] for entry in log_history(TABLE) if "loss" in entry}
    assert train.get_column("step").to_list() == [3, 6, 9, 12]
    assert train.get_column("loss").to_list() == pytest.approx(
        [losses[step] for step in (3, 6, 9, 12)], abs=5e-7)
    assert any("last training loss logged before each evaluation" in note for note in run.notes)


def test_printed_dicts_match_trainer():
    run = read_step_log(PRINTED)
    train, evals = rows(run, "train"), rows(run, "eval")
    logged = [entry for entry in log_history(PRINTED) if "loss" in entry]
    assert (train.height, evals.height) == (12, 4)
    # transformers 5 prints each float with 4 significant digits, as a string.
    for column, key in {"loss": "loss", **METRICS}.items():
        assert train.get_column(column).to_list() == pytest.approx(
            [entry[key] for entry in logged], rel=5e-4, abs=1e-12), column


def test_beta_inferred_only_from_precise_evals():
    # The table prints eval means with 6 decimals, the printed dicts with 4 significant digits.
    table = dpodiag.diagnose(dpodiag.load(TABLE), device="cpu").runs[0].run
    printed = dpodiag.diagnose(dpodiag.load(PRINTED), device="cpu").runs[0].run
    assert table.meta.beta == pytest.approx(0.1, rel=1e-3)
    assert table.meta.source_of("beta") == "inferred"
    assert printed.meta.beta is None


@pytest.mark.parametrize("notebook", [TABLE, PRINTED])
def test_tiny_healthy_run_has_no_error(notebook):
    diagnosis = dpodiag.diagnose(dpodiag.load(notebook), device="cpu")
    assert codes(diagnosis.findings, "error") == set()


@pytest.mark.parametrize(("header", "key"), [
    ("Step", "step"), ("Epoch", "epoch"), ("Training Loss", "loss"),
    ("Validation Loss", "eval_loss"), ("Rewards/chosen", "eval_rewards/chosen"),
    ("Rewards / Chosen", "eval_rewards/chosen"), ("Nll Loss", "eval_nll_loss"),
])
def test_table_header_keys(header, key):
    assert _key(header) == key


def test_notebook_without_outputs(tmp_path):
    path = tmp_path / "train.ipynb"
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": "trainer.train()",
                                           "outputs": [], "metadata": {}}],
                                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    with pytest.raises(NoDataError, match=r"train\.ipynb: no training log in the saved outputs "
                                          r"of its 1 cells; run the training cell and save"):
        read_step_log(path)


def test_notebook_cut_json(tmp_path):
    path = tmp_path / "train.ipynb"
    path.write_text(TABLE.read_text()[:500])
    with pytest.raises(InputError, match=r"train\.ipynb: cannot be parsed as a Jupyter notebook"):
        read_step_log(path)


def test_printed_dicts_beat_the_table(tmp_path):
    notebook = json.loads(TABLE.read_text())
    notebook["cells"].append({"cell_type": "code", "metadata": {}, "source": "", "outputs": [
        {"output_type": "stream", "name": "stdout",
         "text": ["{'loss': 0.69, 'rewards/chosen': 0.0, 'epoch': 0.1}\n",
                  "{'loss': 0.68, 'rewards/chosen': 0.1, 'epoch': 0.2}\n"]}]})
    path = tmp_path / "both.ipynb"
    path.write_text(json.dumps(notebook))
    run = read_step_log(path)
    assert run.table.get_column("loss").to_list() == [0.69, 0.68]
    assert any("1 progress tables were not read" in note for note in run.notes)
