"""Real W&B run files (console output.log, wandb-summary.json, config.yaml, .wandb binary)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from dpodiag.errors import InputError
from dpodiag.io.steplogs import read_step_log, sniff_step_log

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "real_logs"


def read(name: str):
    return read_step_log(FIXTURES / name)


def split(run, name: str) -> pl.DataFrame:
    return run.table.filter(pl.col("split") == name)


def test_nograd_output_log_stuck_at_init():
    run = read("translation-dpo-gams9b-nograd-stuck.wandb_output.log")
    train = split(run, "train")
    assert run.format == "console"
    assert run.dialect == "trl"
    assert run.splits == ["train"]
    assert train.height == 400
    assert (train.get_column("grad_norm") == 0.0).all()
    assert (train.get_column("loss") == 0.6914).all()
    for column in ("rewards_chosen", "rewards_rejected", "rewards_margins", "rewards_accuracies",
                   "logits_chosen", "logits_rejected"):
        assert (train.get_column(column) == 0.0).all(), column
    assert train.get_column("logps_chosen").n_unique() > 100
    assert train.item(-1, "learning_rate") > 0


def test_nograd_wandb_binary_history():
    pytest.importorskip("wandb")
    path = FIXTURES / "translation-dpo-gams9b-nograd-stuck.run.wandb"
    assert sniff_step_log(path) == "wandb-binary"
    run = read_step_log(path)
    train = split(run, "train")
    assert run.format == "wandb-binary"
    assert run.dialect == "trl"
    assert run.splits == ["train"]
    # wandb had flushed 393 of the 400 rows that the console log shows.
    assert train.height == 393
    assert train.get_column("step").to_list() == list(range(1, 394))
    assert (train.get_column("grad_norm") == 0.0).all()
    assert (train.get_column("loss") == 0.6914).all()
    assert (train.get_column("rewards_margins") == 0.0).all()
    assert train.item(0, "logps_chosen") == -4416.0


def test_nograd_wandb_binary_config_metadata():
    pytest.importorskip("wandb")
    run = read("translation-dpo-gams9b-nograd-stuck.run.wandb")
    assert (run.meta.beta, run.meta.loss_type) == (0.2, "sigmoid")
    assert run.meta.source_of("beta") == "trainer-config"
    assert run.meta.policy_model == "cjvt/GaMS-9B-Instruct"
    assert any("cut off where the file ends" in note for note in run.notes)


def test_nograd_binary_matches_console_log():
    pytest.importorskip("wandb")
    binary = split(read("translation-dpo-gams9b-nograd-stuck.run.wandb"), "train")
    console = split(read("translation-dpo-gams9b-nograd-stuck.wandb_output.log"), "train")
    columns = ["loss", "logps_chosen", "logps_rejected", "learning_rate"]
    head = console.head(binary.height)
    for column in columns:
        assert binary.get_column(column).to_list() == pytest.approx(
            head.get_column(column).to_list(), rel=1e-3), column


def test_overopt_steps_from_logging_steps():
    # logging_steps=10 and eval_steps=504 in config.yaml; 0.222 steps/s over 20512.6 s is about
    # 4554 optimizer steps, and epoch 1.0 falls on the evaluation at step 1512.
    run = read("translation-dpo-gams9b-lr4e-6-overopt.wandb_output.log")
    train, evals = split(run, "train"), split(run, "eval")
    assert train.get_column("step").to_list() == list(range(10, 4541, 10))
    assert evals.get_column("step").to_list() == list(range(504, 4537, 504))
    assert evals.filter(pl.col("step") == 1512).item(0, "epoch") == 1.0


def test_overopt_output_log_with_config():
    run = read("translation-dpo-gams9b-lr4e-6-overopt.wandb_output.log")
    train, evals = split(run, "train"), split(run, "eval")
    assert run.dialect == "trl"
    assert (train.height, evals.height) == (454, 9)
    assert run.meta.beta == 0.1
    assert run.meta.loss_type == "sigmoid"
    assert run.meta.policy_model == "cjvt/GaMS-9B-Instruct"
    assert run.meta.source_of("beta") == "trainer-config"
    assert any("logging_steps=10" in note for note in run.notes)
    eval_loss = evals.get_column("loss")
    assert eval_loss.min() == pytest.approx(0.284, abs=1e-3)
    assert evals.item(eval_loss.arg_min(), "epoch") == 1.0
    assert evals.item(-1, "loss") == pytest.approx(0.50, abs=0.01)
    assert evals.get_column("rewards_accuracies").is_between(0.79, 0.89).all()
    assert evals.item(-1, "rewards_chosen") == pytest.approx(-5.69, abs=0.01)
    assert train.get_column("rewards_accuracies").max() == 1.0
    assert train.item(-1, "loss") == 0.0017


def test_overopt_summary_uses_slash_keys():
    run = read("translation-dpo-gams9b-lr4e-6-overopt.wandb-summary.json")
    assert run.format == "wandb-summary"
    assert run.dialect == "trl"
    assert run.table.get_column("split").to_list() == ["train", "eval"]
    assert run.steps == (4545, 4545)
    assert run.column_mapping["loss"] == "train/loss"
    assert split(run, "eval").item(0, "loss") == pytest.approx(0.50071, abs=1e-5)
    assert run.meta.beta == 0.1
    assert any("train_loss=0.157705" in note for note in run.notes)


def test_overopt_config_alone_is_rejected():
    path = FIXTURES / "translation-dpo-gams9b-lr4e-6-overopt.wandb-config.yaml"
    assert sniff_step_log(path) == "wandb-config"
    with pytest.raises(InputError, match=r"wandb-config\.yaml: is a W&B run config "
                                         r"\(config\.yaml\), not a training log; pass the log "
                                         r"beside it \(.*overopt\.wandb_output\.log"):
        read_step_log(path)


def test_chosen_reward_up_output_log():
    run = read("translation-dpo-gams9b-chosen-reward-up.wandb_output.log")
    train, evals = split(run, "train"), split(run, "eval")
    assert (train.height, evals.height) == (1605, 6)
    assert evals.item(0, "rewards_accuracies") == pytest.approx(0.70, abs=0.01)
    assert evals.item(-1, "rewards_accuracies") == pytest.approx(0.774, abs=1e-3)
    assert evals.item(-1, "rewards_chosen") == pytest.approx(2.81, abs=0.01)
    assert train.get_column("grad_norm").max() == pytest.approx(1096, abs=1)
    noisy = train.filter((pl.col("rewards_margins") > 0) & (pl.col("rewards_accuracies") < 0.5))
    assert noisy.height == 66


def test_chosen_reward_up_summary():
    run = read("translation-dpo-gams9b-chosen-reward-up.wandb-summary.json")
    evals = split(run, "eval")
    assert run.steps == (1605, 1605)
    assert evals.item(0, "rewards_accuracies") == pytest.approx(0.774, abs=1e-3)
    assert evals.item(0, "rewards_chosen") == pytest.approx(2.808, abs=1e-3)


def test_slurm_capture_matches_wandb_console(tmp_path):
    # The SLURM stdout of this job prints every dict after carriage-return tqdm redraws on the
    # same line. Rebuild that layout from the real output.log and compare the tables.
    source = FIXTURES / "translation-dpo-gams9b-chosen-reward-up.wandb_output.log"
    lines = source.read_text(encoding="utf-8").splitlines()
    banner = "Namespace(rank=64, learning_rate=3e-07, total_epochs=3, beta=0.2)\n"
    out, step = [banner], 0
    for line in lines:
        if line.startswith("{'loss'"):
            step += 1
            bar = f" {step * 100 // 1605:2d}%|###       | {step}/1605 [1:05:05<1:53:15,  6.43s/it]"
            out.append(f"{bar}\r{bar}\r{' ' * 54}\r{line}\n")
        else:
            out.append(line + "\n")
    slurm = tmp_path / "rm-62175320_0.out"
    slurm.write_text("".join(out), encoding="utf-8")

    console = read_step_log(source)
    captured = read_step_log(slurm)
    assert sniff_step_log(slurm) == "console"
    assert captured.table.drop("run").equals(console.table.drop("run"))
    assert captured.meta.beta == 0.2
    assert captured.name == "rm-62175320_0"


def test_openrlhf_summary_with_config():
    run = read("openrlhf-dpo-gemma2-9b-saturated.wandb-summary.json")
    row = run.table.row(0, named=True)
    assert run.format == "wandb-summary"
    assert run.dialect == "openrlhf"
    assert run.table.height == 1
    assert row["step"] == 36840
    assert row["loss"] == pytest.approx(1.166e-6, rel=1e-3)
    assert row["loss_mean"] == pytest.approx(4.45e-6, rel=1e-2)
    assert row["rewards_accuracies"] == 1.0
    assert row["rewards_chosen"] == pytest.approx(-8.488, abs=1e-3)
    assert row["rewards_rejected"] == pytest.approx(-48.501, abs=1e-3)
    assert "rewards_margins" not in run.table.columns
    assert run.column_mapping["rewards_rejected"] == "train/reject_reward"
    assert (run.meta.beta, run.meta.loss_type, run.meta.framework) == (0.1, "sigmoid", "openrlhf")
    assert run.meta.reference_model == "/home/ubuntu/basemodels/gemma/gemma2-9b-it"


def test_openrlhf_config_alone_is_rejected():
    path = FIXTURES / "openrlhf-dpo-gemma2-9b-saturated.wandb-config.yaml"
    with pytest.raises(InputError, match=r"is a W&B run config \(config\.yaml\), not a training "
                                         r"log; pass the log beside it \(.*wandb-summary\.json"):
        read_step_log(path)
