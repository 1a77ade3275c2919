"""Real TRL DPO step logs: each test asserts what the fixture README's source log contains."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest

from dpodiag.errors import InputError, NoDataError
from dpodiag.io.steplogs import read_step_log, sniff_step_log

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "real_logs"


def read(name: str):
    return read_step_log(FIXTURES / name)


def split(run, name: str) -> pl.DataFrame:
    return run.table.filter(pl.col("split") == name)


def all_nan(series: pl.Series) -> bool:
    return bool(series.is_nan().all())


def test_nan_collapse_trainer_state():
    run = read("trl-dpo-llama2-nan-collapse.trainer_state.json")
    train = split(run, "train")
    assert run.format == "trainer-state"
    assert run.dialect == "trl-legacy"
    assert train.get_column("step").to_list() == [500, 1000, 1500]
    assert run.splits == ["train"]
    assert (train.get_column("loss") == 0.0).all()
    assert (train.get_column("rewards_accuracies") == 0.0).all()
    for column in ("rewards_chosen", "rewards_rejected", "rewards_margins", "logps_chosen",
                   "logps_rejected", "logits_chosen", "logits_rejected"):
        assert all_nan(train.get_column(column)), column
    assert run.column_mapping["rewards_chosen"] == "rewards/chosen"


def test_nan_collapse_stdout_matches_trainer_state():
    run = read("trl-dpo-llama2-nan-collapse.stdout.log")
    state = read("trl-dpo-llama2-nan-collapse.trainer_state.json")
    train, evals = split(run, "train"), split(run, "eval")
    assert run.format == "console"
    assert run.dialect == "trl-legacy"
    assert train.height == 3
    assert evals.height == 1
    assert (train.get_column("loss") == 0.0).all()
    assert all_nan(train.get_column("rewards_chosen"))
    assert train.get_column("learning_rate").to_list() == split(state, "train").get_column(
        "learning_rate").to_list()
    assert math.isnan(evals.item(0, "loss"))
    assert evals.item(0, "rewards_accuracies") == 0.0
    assert evals.item(0, "step") == 3
    assert any("train_loss=0" in note for note in run.notes)
    assert any("no step key" in note for note in run.notes)


def test_cdpo_markdown_paste():
    run = read("trl-cdpo-ls0.05-llama31-8b.console_log.md")
    train, evals = split(run, "train"), split(run, "eval")
    assert run.name == "trl-cdpo-ls0.05-llama31-8b"
    assert run.format == "console"
    assert run.dialect == "trl"
    assert (train.height, evals.height) == (38, 7)
    assert run.meta.beta == 0.1
    assert run.meta.label_smoothing == 0.05
    assert run.meta.loss_type == "cdpo"
    assert run.meta.source_of("beta") == "trainer-config"
    first = train.row(0, named=True)
    assert (first["loss"], first["rewards_margins"], first["rewards_accuracies"]) == (0.6931, 0, 0)
    plateau = train.filter(pl.col("step") >= 11)
    assert plateau.get_column("loss").is_between(0.201, 0.213).all()
    assert plateau.get_column("rewards_margins").is_between(2.78, 3.03).all()
    assert (train.filter(pl.col("epoch") >= 0.48).get_column("rewards_accuracies") == 1.0).all()
    assert (evals.get_column("rewards_accuracies") == 1.0).all()


def test_qwen05b_bare_log_history():
    run = read("trl-dpo-qwen05b-lowvram-noisy.log_history.json")
    train = split(run, "train")
    assert run.format == "log-history-array"
    assert run.dialect == "trl"
    assert train.height == 32
    assert run.steps == (2, 64)
    eighths = train.get_column("rewards_accuracies") * 8
    assert (eighths - eighths.round()).abs().max() < 1e-9
    assert train.item(0, "rewards_chosen") == 0.0
    assert train.get_column("grad_norm").is_between(19, 29).all()
    assert run.meta.beta == 0.1
    assert any("train_loss=0.671332" in note for note in run.notes)


def test_qwen05b_summary_json_is_rejected():
    path = FIXTURES / "trl-dpo-qwen05b-lowvram-noisy.dpo_metrics.json"
    assert sniff_step_log(path) == "json-summary"
    with pytest.raises(NoDataError, match=r"dpo_metrics\.json: contains run-level values and "
                                          r"no per-step records .*; pass the trainer's log"):
        read_step_log(path)


def test_new_trl_wrapper_jsonextract():
    run = read("trl-new-dpo-qwen-qlora-jsonextract.dpo_history.json")
    train = split(run, "train")
    assert run.format == "log-history-wrapper"
    assert run.dialect == "trl-v1"
    assert run.splits == ["train"]
    assert train.get_column("step").to_list() == list(range(1, 91))
    assert {"entropy", "mean_token_accuracy", "num_tokens"} <= set(run.table.columns)
    assert train.item(0, "loss") == pytest.approx(0.6879)
    assert train.item(-1, "loss") < 0.07
    assert train.get_column("rewards_rejected").min() == pytest.approx(-2.97, abs=0.01)
    assert train.item(-1, "rewards_chosen") < 0
    assert train.item(0, "logps_chosen") > train.item(-1, "logps_chosen")
    assert any("run_name=dpo-full-colab" in note for note in run.notes)


def test_new_trl_wrapper_smoke_run():
    run = read("trl-new-dpo-qwen-qlora-smoke4steps.dpo_history.json")
    train = split(run, "train")
    assert run.dialect == "trl-v1"
    assert train.get_column("rewards_accuracies").round(2).to_list() == [0.75, 0.33, 0.5, 0.67]
    assert train.item(1, "rewards_margins") == pytest.approx(-0.076, abs=1e-3)
    assert train.item(1, "loss") == pytest.approx(0.7334)
    assert any("train_loss=0.695377" in note for note in run.notes)


def test_grpo_control_is_not_dpo():
    run = read("CONTROL-trl-grpo-not-dpo.trainer_state.json")
    assert run.format == "trainer-state"
    assert run.dialect == "trl-grpo"
    assert run.table.height == 1
    assert run.table.item(0, "step") == 10
    assert run.table.item(0, "loss") == 0.0
    assert run.meta.loss_type is None
    assert "rewards_chosen" not in run.table.columns
    assert any("not a DPO-family log" in note for note in run.notes)


def test_kto_excerpt_nan_rewards():
    run = read("trl-kto-nan-rewards.issue1447_excerpt.txt")
    train = split(run, "train")
    assert run.dialect == "trl-kto"
    assert run.meta.loss_type == "kto"
    assert train.height == 5
    assert not math.isnan(train.item(0, "loss"))
    assert all_nan(train.get_column("loss").slice(1))
    assert train.get_column("grad_norm").is_finite().all()
    assert train.get_column("kl").to_list()[0] == 0.0
    assert train.item(-1, "kl") == pytest.approx(1.231, abs=1e-3)
    assert math.isnan(train.item(1, "rewards_rejected"))
    assert "rewards_accuracies" not in run.table.columns
    assert any("cut off" in note for note in run.notes)


def test_unstable_lr_excerpt():
    run = read("trl-dpo-lr1e-4-unstable.issue1236_excerpt.txt")
    train = split(run, "train")
    assert run.dialect == "trl-legacy"
    assert train.get_column("loss").to_list() == [1.1507, 2.1113, 0.0076]
    assert train.get_column("rewards_accuracies").to_list() == [0.5, 0.5, 1.0]
    assert train.item(1, "rewards_margins") < 0
    assert any("cut off" in note for note in run.notes)


def test_oldest_format_excerpt():
    run = read("trl-dpo-2023-oldest-format.pr570_excerpt.txt")
    train, evals = split(run, "train"), split(run, "eval")
    assert run.dialect == "trl-legacy"
    assert (train.height, evals.height) == (2, 1)
    assert evals.item(0, "rewards_accuracies") == pytest.approx(0.452, abs=1e-3)
    assert evals.item(0, "rewards_margins") == pytest.approx(-0.0787, abs=1e-4)
    assert evals.item(0, "step") == 1
    assert train.get_column("logits_chosen").is_between(-112.5, -109).all()
    assert "extra_runtime" in run.table.columns


def test_excerpt_tables_have_no_cut_record():
    run = read("trl-dpo-2023-oldest-format.pr570_excerpt.txt")
    assert run.table.get_column("record").to_list() == [0, 1, 2]


def test_unknown_path_is_input_error(tmp_path):
    with pytest.raises(InputError, match=r"missing\.json: file not found; check the path"):
        read_step_log(tmp_path / "missing.json")
