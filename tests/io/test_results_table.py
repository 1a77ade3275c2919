"""Markdown results tables: the "Training results" table of a model card, and pasted tables."""

from __future__ import annotations

import pytest

import dpodiag
from dpodiag.errors import NoDataError
from dpodiag.io.steplogs import read_step_log, sniff_step_log
from synthetic import codes

HEADER = ("| Training Loss | Epoch | Step | Validation Loss | Rewards/chosen | Rewards/rejected "
          "| Rewards/accuracies | Rewards/margins | Logps/chosen | Logps/rejected |")
DIVIDER = "|:-------------:|:-----:|:----:|:---------------:|" + ":---:|" * 6


def model_card(rows: list[tuple], header: str = HEADER, divider: str = DIVIDER) -> str:
    """A model card as transformers writes it, with a Training results table of `rows`."""
    lines = [f"| {' | '.join(str(value) for value in row)} |" for row in rows]
    return "\n".join(["---", "library_name: transformers", "tags:", "- trl", "- dpo", "---", "",
                      "# dpo-run", "", "### Training results", "", header, divider, *lines, "",
                      "### Framework versions", "", "- Transformers 4.46.0"]) + "\n"


def evaluation(step: int, train_loss, eval_loss: float, margin: float) -> tuple:
    chosen, rejected = 0.4 * margin, -0.6 * margin
    return (train_loss, round(step / 400, 4), step, eval_loss, chosen, rejected,
            min(0.5 + margin / 4, 1.0), margin, -120 + 10 * chosen, -130 + 10 * rejected)


def healthy_rows(count: int = 8) -> list[tuple]:
    return [evaluation(50 * k, "No log" if k == 1 else round(0.69 - 0.05 * k, 4),
                       round(0.68 - 0.03 * k, 4), 0.2 * k) for k in range(1, count + 1)]


def test_model_card_table_is_read(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(model_card(healthy_rows()))
    assert sniff_step_log(path) == "results-table"
    run = read_step_log(path)
    train = run.table.filter(run.table["split"] == "train")
    evals = run.table.filter(run.table["split"] == "eval")
    assert train.get_column("step").to_list() == [50 * k for k in range(2, 9)]
    assert evals.get_column("loss").to_list() == [round(0.68 - 0.03 * k, 4) for k in range(1, 9)]
    assert evals.get_column("rewards_margins")[-1] == pytest.approx(1.6)
    assert run.dialect == "trl"  # a table of evaluations has no grad_norm column


def test_table_without_outer_bars(tmp_path):
    # GitHub Markdown allows rows without the leading and trailing "|".
    lines = model_card(healthy_rows()).splitlines()
    path = tmp_path / "notes.md"
    path.write_text("\n".join(line.strip().strip("|") if line.count("|") > 2 else line for line in lines) + "\n")
    run = read_step_log(path)
    assert run.format == "results-table"
    assert run.table.height == 15  # 7 train losses (the first is "No log") and 8 evaluations


def test_rising_validation_loss_is_overfitting(tmp_path):
    rows = [evaluation(50 * k, round(0.69 - 0.08 * k, 4), round(0.5 + 0.04 * abs(k - 3), 4), 0.3 * k)
            for k in range(1, 9)]
    path = tmp_path / "README.md"
    path.write_text(model_card(rows))
    diagnosis = dpodiag.diagnose(dpodiag.load(path), device="cpu")
    assert "overfitting" in codes(diagnosis.findings)


def test_table_comparing_runs_is_rejected(tmp_path):
    header = "| Loss Type | Step | Training Loss | Validation Loss | Rewards/margins |"
    rows = ["| sigmoid | 700 | 1.0466 | 0.8185 | 3.23 |", "| ipo | 700 | 40.1 | 38.2 | 0.51 |"]
    path = tmp_path / "observations.md"
    path.write_text("\n".join([header, "|---|---|---|---|---|", *rows]) + "\n")
    with pytest.raises(NoDataError, match=r"observations\.md: line 1: the results table compares runs "
                                          r"\(its 'Loss Type' column holds ipo, sigmoid\); save each "
                                          r"run's rows in a table of its own"):
        read_step_log(path)


def test_printed_dicts_win_over_a_table(tmp_path):
    dicts = [f"{{'loss': {0.69 - 0.01 * step}, 'rewards/margins': {0.1 * step}, 'epoch': {step / 10}}}"
             for step in range(1, 6)]
    path = tmp_path / "train.md"
    path.write_text(model_card(healthy_rows()) + "\n".join(dicts) + "\n")
    assert sniff_step_log(path) == "console"


def test_empty_results_table(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(model_card([]))
    with pytest.raises(NoDataError, match=r"README\.md: line 12: the results table has no rows; pass "
                                          r"the trainer's log"):
        read_step_log(path)


def test_model_card_without_table(tmp_path):
    # transformers writes the heading without a table when the run logged no evaluation.
    text = model_card([]).replace(HEADER + "\n" + DIVIDER + "\n", "")
    path = tmp_path / "README.md"
    path.write_text(text)
    with pytest.raises(NoDataError, match=r"README\.md: the Training results section has no table, "
                                          r"because the run logged no evaluation"):
        dpodiag.load(path)


def test_model_card_named_after_its_folder(tmp_path):
    folder = tmp_path / "zephyr-dpo"
    folder.mkdir()
    (folder / "README.md").write_text(model_card(healthy_rows()))
    assert read_step_log(folder / "README.md").name == "zephyr-dpo"


def epoch_table(header: str, rows: list[str]) -> str:
    return "\n".join([header, "|---|---|---|---|", *rows]) + "\n"


def test_epoch_table_with_repeated_train_loss_is_silent(tmp_path):
    # Epochs 2 and 3 show the same last logged training loss: one train record, three evaluations.
    path = tmp_path / "README.md"
    path.write_text(epoch_table("| Training Loss | Epoch | Validation Loss | Rewards/margins |",
                                ["| No log | 1.0 | 0.62 | 0.4 |", "| 0.3984 | 2.0 | 0.52 | 0.9 |",
                                 "| 0.3984 | 3.0 | 0.53 | 1.1 |"]))
    diagnosis = dpodiag.diagnose(dpodiag.load(path), device="cpu")
    assert "duplicate-steps" not in codes(diagnosis.findings)


def test_lowercase_headers_are_read(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(epoch_table("| Training loss | Epoch | Validation loss | Rewards/margins |",
                                ["| 0.61 | 1.0 | 0.62 | 0.4 |", "| 0.39 | 2.0 | 0.52 | 0.9 |"]))
    run = read_step_log(path)
    assert run.table.filter(run.table["split"] == "train").get_column("loss").to_list() == [0.61, 0.39]


def test_decimal_commas_are_named(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(epoch_table("| Training Loss | Epoch | Validation Loss | Rewards/margins |",
                                ["| 0,61 | 1,0 | 0,62 | 0,4 |", "| 0,39 | 2,0 | 0,52 | 0,9 |"]))
    with pytest.raises(NoDataError, match=r"line 1: the results table writes its numbers with decimal commas"):
        read_step_log(path)
