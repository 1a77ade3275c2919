"""Step-log formats with no real fixture: small files written here in each trainer's layout."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from dpodiag.errors import InputError
from dpodiag.io import load_runs
from dpodiag.io.steplogs import read_step_log, sniff_step_log

TRAIN_DICT = ("{{'loss': {loss}, 'grad_norm': 1.5, 'learning_rate': 1e-06, "
              "'rewards/chosen': 0.1, 'rewards/rejected': -0.1, 'rewards/accuracies': 0.75, "
              "'rewards/margins': 0.2, 'logps/chosen': -120.0, 'logps/rejected': -130.0, "
              "'epoch': {epoch}}}")


def split(run, name: str) -> pl.DataFrame:
    return run.table.filter(pl.col("split") == name)


def test_torchtune_disklogger_txt(tmp_path):
    path = tmp_path / "log_1712345678.txt"
    path.write_text(
        "Step 1 | loss:0.6931 lr:5e-07 rewards/chosen:0.0 rewards/rejected:0.0 "
        "rewards/accuracies:0.0 rewards/margins:0.0 log_probs/chosen:-120.5 "
        "log_probs/rejected:-130.25 tokens_per_second_per_gpu:1500.2 \n"
        "Step 2 | loss:0.6712 lr:1e-06 rewards/chosen:0.05 rewards/rejected:-0.03 \n"
        "Step 2 | rewards/accuracies:0.625\n"
        "Step 3 | loss:nan lr:1e-06\n")
    run = read_step_log(path)
    table = run.table
    assert sniff_step_log(path) == "torchtune-txt"
    assert run.dialect == "torchtune"
    assert table.get_column("step").to_list() == [1, 2, 3]
    assert table.item(0, "logps_chosen") == -120.5
    assert table.item(1, "rewards_accuracies") == 0.625
    assert table.item(1, "learning_rate") == 1e-06
    assert math.isnan(table.item(2, "loss"))
    assert run.column_mapping["logps_chosen"] == "log_probs/chosen"
    assert "extra_tokens_per_second_per_gpu" in table.columns


def test_torchtune_disklogger_jsonl(tmp_path):
    path = tmp_path / "log_1712345678.jsonl"
    rows = [{"step": s, "loss": 0.7 - s / 100, "log_probs/chosen": -100.0 - s,
             "rewards/chosen": s / 10} for s in (1, 2)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = read_step_log(path)
    assert sniff_step_log(path) == "jsonl"
    assert run.dialect == "torchtune"
    assert run.table.get_column("logps_chosen").to_list() == [-101.0, -102.0]


def test_tensorboard_from_summary_writer(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    folder = tmp_path / "runs" / "dpo-ipo-beta0.25"
    writer = SummaryWriter(log_dir=str(folder))
    args = {"beta": 0.25, "loss_type": "ipo", "logging_steps": 2, "label_smoothing": 0.0}
    writer.add_text("args", json.dumps(args))
    for step in (2, 4, 6):
        writer.add_scalar("train/loss", 25.0 - step, step)
        writer.add_scalar("train/grad_norm", 3.0, step)
        writer.add_scalar("train/rewards/chosen", 0.01 * step, step)
        writer.add_scalar("train/logps/chosen", -50.0 - step, step)
        writer.add_scalar("train/epoch", step / 6, step)
    writer.add_scalar("eval/loss", 20.5, 4)
    writer.add_scalar("eval/rewards/chosen", 0.02, 4)
    writer.add_scalar("train/train_runtime", 12.5, 6)
    writer.add_scalar("train/train_loss", 21.0, 6)
    writer.close()
    path = next(folder.glob("events.out.tfevents.*"))

    run = read_step_log(path)
    train, evals = split(run, "train"), split(run, "eval")
    assert sniff_step_log(path) == "tensorboard"
    assert run.dialect == "trl"
    assert train.get_column("step").to_list() == [2, 4, 6]
    assert train.get_column("loss").to_list() == [23.0, 21.0, 19.0]
    assert evals.get_column("step").to_list() == [4]
    assert evals.item(0, "loss") == 20.5
    assert evals.item(0, "epoch") == pytest.approx(4 / 6)
    assert (run.meta.beta, run.meta.loss_type) == (0.25, "ipo")
    assert run.meta.source_of("beta") == "trainer-config"
    assert run.name == "dpo-ipo-beta0.25"
    assert any("train_runtime=12.5" in note for note in run.notes)


def test_tensorboard_folder_input(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    writer.add_scalar("train/loss", 0.69, 1)
    writer.add_scalar("train/rewards/chosen", 0.0, 1)
    writer.close()
    run = read_step_log(tmp_path)
    assert run.format == "tensorboard"
    assert run.table.item(0, "loss") == pytest.approx(0.69)


def test_wandb_history_csv_export(tmp_path):
    path = tmp_path / "wandb_export_history.csv"
    path.write_text(
        ",_step,_runtime,_timestamp,train/loss,train/rewards/margins,train/global_step,"
        "train/epoch,eval/loss,eval/rewards/margins\n"
        "0,0,10.5,1748792156.7,0.6931,0.0,1,0.01,,\n"
        "1,1,20.5,1748792166.7,0.68,0.05,2,0.02,,\n"
        "2,2,25.0,1748792171.0,,,2,0.02,0.66,0.08\n"
        "3,3,30.5,1748792176.7,0.65,0.12,3,0.03,,\n")
    run = read_step_log(path)
    train, evals = split(run, "train"), split(run, "eval")
    assert sniff_step_log(path) == "wandb-history-csv"
    assert train.get_column("step").to_list() == [1, 2, 3]
    assert train.get_column("loss").to_list() == [0.6931, 0.68, 0.65]
    assert evals.get_column("step").to_list() == [2]
    assert evals.item(0, "rewards_margins") == 0.08
    assert run.column_mapping["step"] == "train/global_step"
    assert "extra_runtime" not in run.table.columns


def test_wandb_panel_csv_export(tmp_path):
    path = tmp_path / "panel.csv"
    path.write_text(
        '"Step","dpo-a - train/loss","dpo-a - train/loss__MIN","dpo-a - train/loss__MAX"\n'
        '"10","0.69","0.68","0.70"\n"20","0.61","0.60","0.62"\n')
    run = read_step_log(path)
    assert sniff_step_log(path) == "wandb-history-csv"
    assert run.table.get_column("step").to_list() == [10, 20]
    assert run.table.get_column("loss").to_list() == [0.69, 0.61]
    assert any("__MIN/__MAX" in note for note in run.notes)


def test_wandb_panel_csv_with_two_runs(tmp_path):
    path = tmp_path / "panel.csv"
    path.write_text('"Step","a - train/loss","b - train/loss"\n"1","0.69","0.70"\n')
    assert read_step_log(path, run_name="b").table.item(0, "loss") == 0.70
    with pytest.raises(InputError, match=r"contains 2 W&B runs \(a, b\); export one run per file"):
        read_step_log(path)


def test_metrics_csv_column_map_override(tmp_path):
    path = tmp_path / "custom.csv"
    path.write_text("iteration,objective,gap,val_objective\n0,0.69,0.0,0.69\n10,0.5,1.1,0.55\n")
    run = read_step_log(path, column_map={"loss": "objective", "rewards_margins": "gap"})
    train, evals = split(run, "train"), split(run, "eval")
    assert run.format == "metrics-csv"
    assert train.get_column("rewards_margins").to_list() == [0.0, 1.1]
    assert evals.get_column("loss").to_list() == [0.69, 0.55]
    assert run.column_mapping["loss"] == "objective"


def test_nemo_rl_console(tmp_path):
    path = tmp_path / "nemo_rl_dpo.log"
    block = ("\n📊 Training Results:\n  • loss: {loss}\n  • sft_loss: 0.0000\n"
             "  • preference_loss: {loss}\n  • accuracy: {acc}\n  • rewards_chosen_mean: 0.0100\n"
             "  • rewards_rejected_mean: -0.0200\n  • num_valid_samples: 64.0000\n"
             "\n⏱️  Timing:\n  • Total step time: 2.31s\n  • policy_training: 2.10s (90.9%)\n")
    path.write_text(
        "🔍 Running initial validation...\n"
        "\n📊 Validation Results for `default` set:\n    • Validation loss: 0.6931\n"
        "    • Validation accuracy: 0.0000\n\n  ⏱️  Validation Timing for `default` set:\n"
        "    • Total validation time: 5.00s\n"
        "\n========================= Epoch 1/1 =========================\n"
        "\n========================= Step 1/2 =========================\n"
        "▶ Taking a training step...\n"
        + block.format(loss="0.6931", acc="0.0000")
        + "\n========================= Step 2/2 =========================\n"
        + block.format(loss="0.6500", acc="0.6250"))
    run = read_step_log(path)
    train, evals = split(run, "train"), split(run, "eval")
    assert sniff_step_log(path) == "nemo-rl-console"
    assert run.dialect == "nemo-rl"
    assert train.get_column("step").to_list() == [1, 2]
    assert train.get_column("rewards_accuracies").to_list() == [0.0, 0.625]
    assert train.item(1, "preference_loss") == 0.65
    assert evals.get_column("step").to_list() == [0]
    assert evals.item(0, "loss") == 0.6931
    assert "extra_total_step_time" not in run.table.columns


def test_mlx_validation_lines(tmp_path):
    path = tmp_path / "mlx_dpo.txt"
    path.write_text(
        "Iter 1: Val loss 0.693, Val took 1.250s\n"
        "Iter 10: Train loss 0.650, Chosen reward 0.100, Rejected reward -0.050, "
        "Learning Rate 1.000e-05, It/sec 1.100, Tokens/sec 600.000, Trained Tokens 5000.0, "
        "Peak mem 2.334 GB\n"
        "Iter 10: Saved adapter weights to adapters.safetensors.\n")
    run = read_step_log(path)
    assert split(run, "eval").item(0, "loss") == 0.693
    assert split(run, "train").item(0, "rewards_chosen") == 0.1
    assert split(run, "train").item(0, "step") == 10


def test_hard_wrapped_markdown_paste(tmp_path):
    path = tmp_path / "issue.md"
    first = TRAIN_DICT.format(loss=0.6931, epoch=0.1)
    second = TRAIN_DICT.format(loss=0.6512, epoch=0.2)
    wrapped = "\n".join("    " + first[i:i + 60] for i in range(0, len(first), 60))
    path.write_text(f"Training output:\n\n```\n{wrapped}\n    {second}\n```\n")
    run = read_step_log(path)
    assert run.table.get_column("loss").to_list() == [0.6931, 0.6512]
    assert run.table.item(0, "logps_rejected") == -130.0


def test_console_tensor_and_numpy_reprs(tmp_path):
    path = tmp_path / "stdout.txt"
    path.write_text("{'loss': tensor(0.6931, device='cuda:0'), 'rewards/chosen': "
                    "np.float64(0.25), 'rewards/margins': -inf, 'epoch': 0.5}\n")
    run = read_step_log(path)
    assert run.table.item(0, "loss") == pytest.approx(0.6931)
    assert run.table.item(0, "rewards_chosen") == 0.25
    assert run.table.item(0, "rewards_margins") == -math.inf


def test_console_values_printed_as_strings(tmp_path):
    # transformers 5 formats each float with "{:.4g}" before printing the log dict.
    path = tmp_path / "slurm-123.out"
    path.write_text("\r 10%|#         | 1/10 [00:01<00:09]{'loss': '0.6931', 'grad_norm': '1.5', "
                    "'learning_rate': '1e-06', 'rewards/chosen': '-0.006787', "
                    "'rewards/margins': 'nan', 'epoch': '0.1'}\n"
                    "{'loss': '0.65', 'rewards/chosen': '0.0123', 'rewards/margins': '0.25', "
                    "'epoch': '0.2'}\n")
    assert sniff_step_log(path) == "console"
    run = read_step_log(path)
    assert run.table.get_column("loss").to_list() == [0.6931, 0.65]
    assert run.table.item(0, "learning_rate") == 1e-06
    assert run.table.item(0, "rewards_chosen") == -0.006787
    assert math.isnan(run.table.item(0, "rewards_margins"))


def test_steps_from_logging_steps(tmp_path):
    folder = tmp_path / "run-1"
    (folder / "files").mkdir(parents=True)
    (folder / "files" / "config.yaml").write_text(
        "_wandb:\n    value: {}\nbeta:\n    value: 0.1\nlogging_steps:\n    value: 5\n")
    lines = [TRAIN_DICT.format(loss=0.69 - 0.01 * k, epoch=round(0.05 * k, 2)) for k in range(1, 9)]
    (folder / "files" / "output.log").write_text("\n".join(lines) + "\n")
    run = read_step_log(folder)
    assert run.table.get_column("step").to_list() == [5, 10, 15, 20, 25, 30, 35, 40]


def test_steps_counted_when_epochs_are_uneven(tmp_path):
    # A log that starts mid-run: its epochs do not grow from 0, so records are only counted.
    folder = tmp_path / "run-2"
    (folder / "files").mkdir(parents=True)
    (folder / "files" / "config.yaml").write_text(
        "_wandb:\n    value: {}\nbeta:\n    value: 0.1\nlogging_steps:\n    value: 5\n")
    lines = [TRAIN_DICT.format(loss=0.6, epoch=round(0.5 + 0.05 * k, 2)) for k in range(1, 9)]
    (folder / "files" / "output.log").write_text("\n".join(lines) + "\n")
    run = read_step_log(folder)
    assert run.table.get_column("step").to_list() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert any("step k is the k-th train record" in note for note in run.notes)


def test_eval_before_first_train_record(tmp_path):
    path = tmp_path / "run.log"
    path.write_text("{'eval_loss': 0.6931, 'eval_rewards/accuracies': 0.0, 'epoch': 0}\n"
                    + TRAIN_DICT.format(loss=0.69, epoch=0.1) + "\n"
                    + "{'eval_loss': 0.6, 'eval_rewards/accuracies': 0.7, 'epoch': 0.1}\n")
    run = read_step_log(path)
    assert run.table.get_column("split").to_list() == ["eval", "train", "eval"]
    assert run.table.get_column("step").to_list() == [0, 1, 1]
    assert run.table.get_column("record").to_list() == [0, 1, 2]


def test_wandb_run_folder(tmp_path):
    folder = tmp_path / "run-20250612_102854-abcd1234"
    files = folder / "files"
    files.mkdir(parents=True)
    (folder / "run-abcd1234.wandb").write_bytes(b":W&B\x00\x01\x00binary")
    (files / "config.yaml").write_text("_wandb:\n    value: {}\nbeta:\n    value: 0.2\n"
                                       "loss_type:\n    value: hinge\n")
    (files / "output.log").write_text(TRAIN_DICT.format(loss=1.0, epoch=0.1) + "\n")
    run = read_step_log(folder)
    assert run.format == "console"
    assert run.name == "run-20250612_102854-abcd1234"
    assert (run.meta.beta, run.meta.loss_type) == (0.2, "hinge")
    assert any("read files/output.log" in note for note in run.notes)


def test_hf_output_folder_prefers_trainer_state(tmp_path):
    for step in (10, 20):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        history = [{"loss": 0.69, "step": s, "rewards/chosen": 0.0} for s in range(1, step + 1)]
        (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": history}))
        (checkpoint / "training_args.bin").write_bytes(b"\x80\x04")
    run = read_step_log(tmp_path)
    assert run.steps == (1, 20)
    assert any("training_args.bin is a pickle" in note for note in run.notes)


def test_output_dir_with_console_log_reads_checkpoint(tmp_path):
    # An output_dir contains the console capture and checkpoint-N/trainer_state.json. The
    # trainer state has the real steps, so it is the log read, and the run note says so.
    checkpoint = tmp_path / "out" / "checkpoint-1500"
    checkpoint.mkdir(parents=True)
    history = [{"loss": 0.69, "step": step, "rewards/chosen": 0.0} for step in (500, 1000, 1500)]
    (checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    (tmp_path / "out" / "train.log").write_text(TRAIN_DICT.format(loss=0.69, epoch=0.1) + "\n")
    (run,) = load_runs(tmp_path / "out")
    assert run.steps == (500, 1500)
    assert any("read checkpoint-1500/trainer_state.json from folder" in note for note in run.notes)


def test_wandb_folder_of_run_folders(tmp_path):
    wandb = tmp_path / "wandb"
    for name, loss in (("run-20250101_000000-aaaa", 0.6), ("run-20250102_000000-bbbb", 0.5)):
        files = wandb / name / "files"
        files.mkdir(parents=True)
        (files / "output.log").write_text(TRAIN_DICT.format(loss=loss, epoch=0.1) + "\n")
        (wandb / name / "logs").mkdir()
        (wandb / name / "logs" / "debug.log").write_text("wandb: {'loss': 'not a log'}\n")
    (wandb / "latest-run").symlink_to(wandb / "run-20250102_000000-bbbb")
    (wandb / "debug.log").symlink_to(wandb / "run-20250102_000000-bbbb" / "logs" / "debug.log")
    # A run killed before its first record has an output.log without metrics.
    (wandb / "run-20250103_000000-cccc" / "files").mkdir(parents=True)
    (wandb / "run-20250103_000000-cccc" / "files" / "output.log").write_text("starting\n")
    runs = load_runs(wandb)
    assert [run.name for run in runs] == ["run-20250101_000000-aaaa", "run-20250102_000000-bbbb"]
    assert [run.table.item(0, "loss") for run in runs] == [0.6, 0.5]


def test_pair_logs_not_sniffed(tmp_path):
    # Per-pair logs belong to the pair reader even when they look like JSON Lines or CSV logs.
    rows = [{"step": 1, "example_id": i, "policy_chosen_logps": -1.0,
             "policy_rejected_logps": -2.0} for i in range(3)]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    csv = tmp_path / "pairs.csv"
    csv.write_text("step,chosen_logps,rejected_logps,ref_chosen_logps,ref_rejected_logps\n"
                   "1,-1,-2,-1,-2\n1,-1.5,-2,-1,-2\n")
    scores = tmp_path / "rewardbench.json"
    scores.write_text(json.dumps([{"scores_chosen": 1.0, "scores_rejected": 0.5}]))
    assert sniff_step_log(jsonl) is None
    assert sniff_step_log(csv) is None
    assert sniff_step_log(scores) is None


def test_trainer_settings_from_config(tmp_path):
    (tmp_path / "config.yaml").write_text(
        "_wandb:\n    value: {}\nbeta:\n    value: 0.1\nloss_type:\n    value: [sigmoid]\n"
        "use_weighting:\n    value: true\nld_alpha:\n    value: 0.5\n"
        "transformers_version:\n    value: 4.45.0\n")
    (tmp_path / "output.log").write_text(TRAIN_DICT.format(loss=0.69, epoch=0.1) + "\n")
    run = read_step_log(tmp_path / "output.log")
    assert run.meta.loss_type == "sigmoid"
    assert run.meta.trainer_config["use_weighting"] is True
    assert run.meta.trainer_config["ld_alpha"] == 0.5
    assert run.dialect == "trl-legacy"


@pytest.mark.parametrize("history_key", ["log_history", "train_log_history"])
def test_settings_beside_records_are_read(tmp_path, history_key):
    # Project-specific exports state beta and TRL's list-valued loss_type beside the records.
    records = [{"step": step, "loss": 0.69 - 0.01 * step, "rewards/chosen": 0.01 * step,
                "rewards/rejected": -0.01 * step, "rewards/margins": 0.02 * step} for step in (1, 2, 3)]
    path = tmp_path / "dpo_metrics.json"
    path.write_text(json.dumps({"beta": 0.2, "loss_type": ["sigmoid"], "lr": 5e-6, history_key: records}))
    run = read_step_log(path)
    assert (run.meta.beta, run.meta.source_of("beta")) == (0.2, "trainer-config")
    assert run.meta.loss_type == "sigmoid"
    assert any(note.startswith("settings read beside the records: ") for note in run.notes)


def test_history_of_hand_written_loop(tmp_path):
    # A hand-written loop's JSON: run values, and a "history" list of records with a step.
    history = [{"step": step, "loss": 0.69 - 0.1 * step, "chosen_reward": 0.01 * step,
                "rejected_reward": -0.2 * step, "reward_gap": 0.21 * step} for step in range(1, 7)]
    path = tmp_path / "dpo_metrics.json"
    path.write_text(json.dumps({"beta": 0.1, "final_train_loss": 0.1, "history": history}))
    run = read_step_log(path)
    assert run.format == "log-history-wrapper"
    assert {"rewards_chosen", "rewards_rejected", "rewards_margins"} <= set(run.table.columns)
    assert run.table.height == 6


def test_ms_swift_progress_gives_the_step(tmp_path):
    # ms-swift prints the step as text: 'global_step/max_steps': '5/100'.
    lines = [f"{{'loss': {0.69 - 0.01 * step}, 'rewards/chosen': {0.01 * step}, 'rewards/rejected': 0.0, "
             f"'epoch': {step / 100}, 'global_step/max_steps': '{step}/100', 'percentage': '{step}.00%'}}"
             for step in (1, 5, 10)]
    path = tmp_path / "train.log"
    path.write_text("\n".join(lines) + "\n")
    run = read_step_log(path)
    assert run.table.get_column("step").to_list() == [1, 5, 10]
