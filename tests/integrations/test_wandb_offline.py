"""A real TRL DPO run that reports to W&B in offline mode: its run-<id>.wandb file read back.

wandb's offline mode writes the run file locally. WANDB_BASE_URL points at a closed port on
127.0.0.1, so no request could leave the machine even if the library tried one.
"""

import json
import time

import polars as pl
import pytest

pytest.importorskip("trl", reason="TRL is not installed; pip install -e '.[test]' installs it")
pytest.importorskip("wandb", reason="wandb is not installed; pip install -e '.[test]' installs it")

from tiny_hf import reversal_pairs, save_tiny_model

import dpodiag

METRICS = {"loss": "loss", "rewards_chosen": "rewards/chosen", "rewards_rejected": "rewards/rejected",
           "rewards_margins": "rewards/margins", "rewards_accuracies": "rewards/accuracies",
           "logps_chosen": "logps/chosen", "logps_rejected": "logps/rejected"}


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """Train 8 DPO steps with report_to="wandb"; return (log_history, the .wandb file)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    folder = tmp_path_factory.mktemp("wandb-run")
    patch = pytest.MonkeyPatch()
    patch.setenv("WANDB_MODE", "offline")
    patch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    patch.setenv("WANDB_DIR", str(folder))
    patch.setenv("WANDB_SILENT", "true")
    patch.setenv("WANDB_PROJECT", "dpodiag-test")
    try:
        model_folder = save_tiny_model(folder / "tiny-llama")
        model = AutoModelForCausalLM.from_pretrained(model_folder, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(model_folder)
        config = DPOConfig(output_dir=str(folder / "out"), per_device_train_batch_size=4,
                           per_device_eval_batch_size=4, max_steps=8, logging_steps=1,
                           eval_strategy="steps", eval_steps=4, learning_rate=1e-2, beta=0.2,
                           report_to="wandb", save_strategy="no", use_cpu=True, seed=0,
                           bf16=False, disable_tqdm=True)
        trainer = DPOTrainer(model=model, args=config, processing_class=tokenizer,
                             train_dataset=Dataset.from_dict(reversal_pairs(32, seed=1)),
                             eval_dataset=Dataset.from_dict(reversal_pairs(8, seed=2)))
        trainer.train()
        import wandb

        wandb.finish()
    finally:
        patch.undo()
    (run_file,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    wait_until_written(run_file)
    return trainer.state.log_history, run_file


def wait_until_written(path, settle=1.0, limit=60.0):
    """Wait until `path` has kept its size for `settle` seconds. wandb's service process writes
    the run file; one read right after wandb.finish() found no history records, in a fresh
    clone, and passed on every rerun."""
    deadline = time.monotonic() + limit
    size, since = path.stat().st_size, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        current = path.stat().st_size
        if current != size:
            size, since = current, time.monotonic()
        elif time.monotonic() - since >= settle:
            return


def test_history_matches_log_history(offline_run):
    history, run_file = offline_run
    (run,) = dpodiag.load(run_file)
    assert run.format == "wandb-binary"
    train = run.table.filter(pl.col("split") == "train").sort("step")
    logged = [entry for entry in history if "loss" in entry and "train_runtime" not in entry]
    assert train.get_column("step").to_list() == [entry["step"] for entry in logged]
    for column, key in METRICS.items():
        assert train.get_column(column).to_list() == pytest.approx(
            [entry[key] for entry in logged], rel=1e-6, abs=1e-9), column


def test_eval_rows_match_log_history(offline_run):
    history, run_file = offline_run
    (run,) = dpodiag.load(run_file)
    evals = run.table.filter(pl.col("split") == "eval").sort("step")
    logged = [entry for entry in history if "eval_loss" in entry]
    assert evals.get_column("step").to_list() == [entry["step"] for entry in logged]
    assert evals.get_column("loss").to_list() == pytest.approx(
        [entry["eval_loss"] for entry in logged], rel=1e-6)


def test_config_gives_beta_and_loss_type(offline_run):
    _, run_file = offline_run
    (run,) = dpodiag.load(run_file)
    assert run.meta.beta == 0.2
    assert run.meta.loss_type == "sigmoid"
    assert run.meta.source_of("beta") == "trainer-config"
    assert json.dumps(run.meta.trainer_config.get("logging_steps")) == "1"
