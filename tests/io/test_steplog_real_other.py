"""Real step logs of LLaMA-Factory, SimPO, mlx-lm, hand-written trainers and the eric-mitchell
DPO repo's learning-dynamics fork."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest

from dpodiag.io.steplogs import read_step_log, sniff_step_log

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "real_logs"


def read(name: str):
    return read_step_log(FIXTURES / name)


def split(run, name: str) -> pl.DataFrame:
    return run.table.filter(pl.col("split") == name)


def test_llamafactory_trainer_state_orpo():
    run = read("llamafactory-orpo-glm4-recsys.trainer_state.json")
    train = split(run, "train")
    assert run.format == "trainer-state"
    assert run.dialect == "llamafactory"
    assert train.height == 33
    assert run.steps == (10, 330)
    assert run.meta.loss_type == "orpo"
    assert run.meta.source_of("loss_type") == "inferred"
    assert run.meta.logps_normalisation == "mean"
    assert train.get_column("rewards_accuracies").head(2).round(3).to_list() == [0.463, 0.475]
    assert train.get_column("rewards_margins").abs().max() < 0.0035
    assert train.get_column("logps_chosen").is_between(-1, -0.018).all()
    assert train.item(-1, "sft_loss") < 0.002
    assert "odds_ratio_loss" in train.columns
    assert any("train_loss=0.196971" in note for note in run.notes)


def test_llamafactory_trainer_log_jsonl():
    run = read("llamafactory-orpo-glm4-recsys.trainer_log.jsonl")
    state = read("llamafactory-orpo-glm4-recsys.trainer_state.json")
    assert run.format == "llamafactory-jsonl"
    assert run.dialect == "llamafactory"
    assert run.table.height == 33
    assert run.column_mapping["rewards_accuracies"] == "accuracy"
    assert run.column_mapping["step"] == "current_steps"
    assert set(run.table.columns) >= {"loss", "rewards_accuracies", "learning_rate", "epoch"}
    assert "rewards_margins" not in run.table.columns
    joined = run.table.join(state.table, on="step", suffix="_state")
    assert joined.height == 33
    assert (joined["loss"] == joined["loss_state"]).all()
    assert (joined["rewards_accuracies"] == joined["rewards_accuracies_state"]).all()
    assert any("without metric values" in note for note in run.notes)


def test_llamafactory_all_results_final_eval():
    run = read("llamafactory-orpo-glm4-recsys.all_results.json")
    assert run.format == "hf-results"
    assert run.splits == ["eval"]
    row = run.table.row(0, named=True)
    assert row["rewards_accuracies"] == pytest.approx(0.56)
    assert row["rewards_margins"] == pytest.approx(0.000553, abs=1e-6)
    assert row["odds_ratio_loss"] == pytest.approx(1.2451, abs=1e-4)
    assert any("train_loss=0.196971" in note for note in run.notes)


def test_scratch_dpo_metrics_csv():
    run = read("scratch-dpo-llama31-8b-html-saturated.metrics.csv")
    train, evals = split(run, "train"), split(run, "eval")
    assert run.format == "metrics-csv"
    assert run.dialect == "generic"
    assert (train.height, evals.height) == (11, 11)
    assert train.get_column("step").to_list() == list(range(0, 51, 5))
    assert run.column_mapping["rewards_margins"] == "train_reward_margin"
    assert run.column_mapping["ref_logps_chosen"] == "reference_chosen_logprobs"
    assert train.item(0, "loss") == pytest.approx(math.log(2))
    assert train.item(2, "loss") < 1e-10
    assert evals.get_column("loss").min() == 2.0148170995441655e-14
    assert evals.get_column("rewards_margins").slice(3).is_between(31, 33).all()
    assert (evals.get_column("rewards_accuracies").slice(1) == 1.0).all()
    assert any("batch_records.json" in note for note in run.notes)


def test_scratch_dpo_batch_records():
    run = read("scratch-dpo-llama31-8b-html-saturated.batch_records.json")
    assert run.format == "log-history-array"
    assert run.table.get_column("step").to_list() == [2, 3, 4]
    assert run.column_mapping["rewards_margins"] == "reward_diff"
    assert "extra_loss_change" in run.table.columns
    assert any("sample_chosen" in note for note in run.notes)


def test_scratch_dpop_chosen_stays_above_reference():
    run = read("scratch-dpop-llama31-8b-content.metrics.csv")
    train = split(run, "train")
    drift = train.get_column("logps_chosen") - train.get_column("ref_logps_chosen")
    assert (drift >= 0).all()
    assert drift.max() == pytest.approx(22.87, abs=0.01)
    assert train.item(-1, "loss") == pytest.approx(0.1355, abs=1e-4)
    assert split(run, "eval").item(-1, "loss") == pytest.approx(0.2349, abs=1e-4)


def test_scratch_dpop_batch_records():
    run = read("scratch-dpop-llama31-8b-content.batch_records.json")
    table = run.table
    assert table.height == 16
    assert run.steps == (10, 50)
    spike = table.filter(pl.col("step") == 22)
    assert spike.item(0, "loss") == pytest.approx(1.846, abs=1e-3)
    assert spike.item(0, "extra_loss_change") == pytest.approx(1.293, abs=1e-3)


def test_simpo_console_log():
    run = read("adaptive-simpo-llama3-8b-lr5e-5-logp-collapse.console.log")
    train, evals = split(run, "train"), split(run, "eval")
    assert run.format == "console"
    assert run.dialect == "trl-simpo"
    assert (train.height, evals.height) == (84, 4)
    assert run.meta.loss_type == "simpo"
    assert evals.get_column("step").to_list() == [20, 40, 60, 80]
    assert "extra_perf_peak_gpu_memory_gb" in evals.columns
    assert evals.get_column("extra_perf_peak_gpu_memory_gb").is_not_null().all()
    assert any("train_runtime=3974.33" in note for note in run.notes)


def test_simpo_tensorboard_events():
    pytest.importorskip("tensorboard")
    path = FIXTURES / "adaptive-simpo-llama3-8b-lr5e-5-logp-collapse.events.out.tfevents"
    run = read_step_log(path)
    train, evals = split(run, "train"), split(run, "eval")
    assert sniff_step_log(path) == "tensorboard"
    assert run.dialect == "trl-simpo"
    assert train.get_column("step").to_list() == list(range(5, 421, 5))
    assert evals.get_column("step").to_list() == [100, 200, 300, 400]
    assert train.get_column("learning_rate").max() == pytest.approx(5e-5, rel=1e-3)
    assert train.item(0, "avg_logps_chosen") == pytest.approx(-1.42, abs=0.01)
    assert train.item(-1, "avg_logps_chosen") == pytest.approx(-57.3, abs=0.1)
    assert train.get_column("avg_logps_chosen").min() == pytest.approx(-77.0, abs=0.1)
    assert train.item(-1, "logps_chosen") == pytest.approx(-14966, abs=1)
    assert evals.get_column("rewards_accuracies").round(2).to_list() == [0.68, 0.77, 0.81, 0.83]
    assert train.get_column("grad_norm").max() == pytest.approx(16.75, abs=0.01)
    # The fork keeps DPOConfig's default loss_type sigmoid; its logged keys are SimPO's.
    assert (run.meta.beta, run.meta.loss_type) == (0.1, "simpo")
    assert run.meta.source_of("loss_type") == "inferred"
    assert run.meta.logps_normalisation == "sum"
    assert any("declares loss_type sigmoid, TRL's default" in note for note in run.notes)


def test_simpo_loss_type_same_from_events_and_console():
    pytest.importorskip("tensorboard")
    events = read("adaptive-simpo-llama3-8b-lr5e-5-logp-collapse.events.out.tfevents")
    console = read("adaptive-simpo-llama3-8b-lr5e-5-logp-collapse.console.log")
    assert events.meta.loss_type == console.meta.loss_type == "simpo"


def test_simpo_tensorboard_matches_console():
    pytest.importorskip("tensorboard")
    events = read("adaptive-simpo-llama3-8b-lr5e-5-logp-collapse.events.out.tfevents")
    console = read("adaptive-simpo-llama3-8b-lr5e-5-logp-collapse.console.log")
    for name in ("train", "eval"):
        difference = split(events, name)["loss"] - split(console, name)["loss"]
        assert difference.abs().max() < 1e-6


def test_simpo_project_summary():
    run = read("adaptive-simpo-llama3-8b-lr5e-5-logp-collapse.summary.json")
    assert run.format == "tag-summary"
    assert split(run, "train").item(0, "step") == 420
    assert split(run, "eval").item(0, "step") == 400
    assert split(run, "eval").item(0, "rewards_accuracies") == pytest.approx(0.8253, abs=1e-4)
    assert any("train_loss_final" in note for note in run.notes)


def test_mlx_excerpt():
    run = read("mlx-lm-dpo-saturated.pr1209_excerpt.txt")
    table = run.table
    assert run.format == "mlx-lm-console"
    assert run.dialect == "mlx-lm"
    assert table.get_column("step").to_list() == list(range(63, 70))
    assert table.get_column("loss").max() <= 0.001
    assert table.get_column("rewards_chosen").is_between(-8.41, -6.1).all()
    assert table.get_column("rewards_rejected").is_between(-17, -13).all()
    assert "rewards_margins" not in table.columns
    assert "extra_peak_mem_gb" in table.columns
    assert any("cut off" in note for note in run.notes)


def test_eric_learning_dynamics_jsonl():
    run = read("eric-dpo-learning-dynamics-pythia410m.prob_train_metrics.jsonl")
    table = run.table
    chosen = table.get_column("logps_chosen")
    assert run.format == "jsonl"
    assert run.dialect == "eric-mitchell-dpo"
    assert table.height == 50
    assert chosen[0] == pytest.approx(-152.0, abs=0.05)
    assert chosen.max() == pytest.approx(-140.2, abs=0.05)
    assert chosen.arg_max() == 25
    assert chosen[-1] == pytest.approx(-146.3, abs=0.05)
    assert table.item(0, "logps_rejected") == pytest.approx(-121.4, abs=0.05)
    assert table.item(-1, "logps_rejected") == pytest.approx(-197.6, abs=0.05)
    assert math.isnan(table.item(-1, "extra_except_argmax_prob_logits"))
    assert any("examples" in note for note in run.notes)
