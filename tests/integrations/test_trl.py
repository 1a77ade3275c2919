"""record_pairs on a real TRL DPOTrainer: a tiny local Llama, a few DPO steps on the CPU.

The recorded per-pair values must reproduce what TRL itself logs for the same steps
(trainer.state.log_history), and the training must be the same with and without recording.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("trl", reason="TRL is not installed; pip install -e '.[test]' installs it")

from tiny_hf import reversal_pairs, save_tiny_model

import dpodiag
from dpodiag.errors import UsageError
from dpodiag.integrations.trl import record_pairs

BETA = 0.1
TRL_RUNS = Path(__file__).resolve().parents[1] / "fixtures" / "trl_runs"
# TRL averages float32 values in float32; the recorder stores the same float32 values as
# float64. The means then differ by float32 rounding: about 1e-7 of the value, plus 1e-9.
ABSOLUTE_TOLERANCE = 1e-6
RELATIVE_TOLERANCE = 1e-6
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected")


def train(folder, output_dir, *, record=True, **config):
    """Run a few DPO steps on the tiny model and return (trainer, recorder or None)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    settings = {"output_dir": str(output_dir), "per_device_train_batch_size": 4,
                "per_device_eval_batch_size": 4, "max_steps": 6, "logging_steps": 1,
                "eval_strategy": "steps", "eval_steps": 3, "learning_rate": 1e-2, "beta": BETA,
                "report_to": "none", "save_strategy": "no", "use_cpu": True, "seed": 0,
                "disable_tqdm": True}
    settings.update(config)
    trainer = DPOTrainer(model=model, args=DPOConfig(**settings), processing_class=tokenizer,
                         train_dataset=Dataset.from_dict(reversal_pairs(32, seed=1)),
                         eval_dataset=Dataset.from_dict(reversal_pairs(8, seed=2)))
    recorder = record_pairs(trainer) if record else None
    trainer.train()
    return trainer, recorder


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def recorded(model_folder, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("dpo")
    # float32 throughout: DPOConfig's default bf16=True autocasts on the CPU too, which would
    # keep dpodiag score from reproducing TRL's log-probs to float32 precision.
    trainer, recorder = train(model_folder, output_dir, bf16=False)
    recorder.close()
    return trainer, output_dir / "dpodiag-pairs"


def recorded_metrics(table: pl.DataFrame, split: str, step: int) -> dict[str, float]:
    """Recompute TRL's logged means from the recorded rows of one split and step."""
    rows = table.filter((pl.col("split") == split) & (pl.col("step") == step))
    assert rows.height > 0, f"no {split} rows at step {step}"
    chosen = BETA * (rows["policy_chosen_logps"] - rows["reference_chosen_logps"])
    rejected = BETA * (rows["policy_rejected_logps"] - rows["reference_rejected_logps"])
    return {"rewards/chosen": chosen.mean(), "rewards/rejected": rejected.mean(),
            "rewards/margins": (chosen - rejected).mean(),
            "rewards/accuracies": (chosen > rejected).cast(pl.Float64).mean(),
            "logps/chosen": rows["policy_chosen_logps"].mean(),
            "logps/rejected": rows["policy_rejected_logps"].mean(), "loss": rows["loss"].mean()}


def differences(trainer, table) -> list[tuple[str, int, str, float, float]]:
    """Return (split, step, metric, logged, |recorded - logged|) for every train and eval record."""
    result = []
    for entry in trainer.state.log_history:
        if "rewards/chosen" in entry:
            # TRL logs the window of update k at step k; its batch was scored after k - 1 updates.
            mine = recorded_metrics(table, "train", entry["step"] - 1)
            keys = {metric: metric for metric in METRICS} | {"loss": "loss"}
            split = "train"
        elif "eval_rewards/chosen" in entry:
            mine = recorded_metrics(table, "eval", entry["step"])
            keys = {metric: f"eval_{metric}" for metric in METRICS} | {"loss": "eval_loss"}
            split = "eval"
        else:
            continue
        for metric, key in keys.items():
            result.append((split, entry["step"], metric, entry[key], abs(mine[metric] - entry[key])))
    return result


def assert_close(found):
    """Assert every difference is within float32 rounding, naming the worst one."""
    outside = [item for item in found if item[4] > ABSOLUTE_TOLERANCE + RELATIVE_TOLERANCE * abs(item[3])]
    assert outside == [], f"{len(outside)} metrics differ, the first: {outside[0]}"


def test_check_reads_recorded_folder(recorded):
    _, folder = recorded
    result = subprocess.run([sys.executable, "-m", "dpodiag", "check", str(folder), "--format", "json"],
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    (run,) = document["runs"]
    # The recorder's folder names no run, so the run takes the name of the output_dir above it.
    assert (run["run"], run["level"], run["splits"]) == (folder.parent.name, "pairs", ["train", "eval"])
    assert (run["beta"], run["beta_source"], run["loss_type"]) == (BETA, "metadata", "sigmoid")
    assert [f["code"] for f in document["findings"] if f["severity"] == "error"] == []


def test_output_dir_reads_the_recorded_pairs(recorded, tmp_path):
    # An output_dir with a checkpoint's trainer_state.json beside the recorded pairs: the pairs,
    # which carry every pair's log-probs, are read in its place.
    _, folder = recorded
    output_dir = tmp_path / "run-a"
    shutil.copytree(folder, output_dir / "dpodiag-pairs")
    (output_dir / "checkpoint-40").mkdir()
    shutil.copy(TRL_RUNS / "dpo-sigmoid.trainer_state.json", output_dir / "checkpoint-40" / "trainer_state.json")
    (run,) = dpodiag.load(output_dir)
    assert (run.name, run.level) == ("run-a", "pairs")
    assert any("read the pairs recorded in dpodiag-pairs/" in note for note in run.notes)


def test_recorded_rows(recorded):
    _, folder = recorded
    (run,) = dpodiag.load([folder])
    table = run.table
    train_rows = table.filter(pl.col("split") == "train")
    eval_rows = table.filter(pl.col("split") == "eval")
    assert train_rows["step"].value_counts().sort("step").rows() == [(step, 4) for step in range(6)]
    assert eval_rows["step"].value_counts().sort("step").rows() == [(3, 8), (6, 8)]
    assert table["example_id"].null_count() == 0
    assert eval_rows.filter(pl.col("step") == 3)["example_id"].sort().to_list() == \
        eval_rows.filter(pl.col("step") == 6)["example_id"].sort().to_list()
    assert (table["chosen_length"] > 0).all()
    assert run.meta.framework.startswith("trl ")
    # Before the first update the policy is the reference, so every log-ratio is exactly 0.
    first = train_rows.filter(pl.col("step") == 0)
    assert (first["policy_chosen_logps"] == first["reference_chosen_logps"]).all()


def test_rewards_match_trl_logs(recorded):
    trainer, folder = recorded
    (run,) = dpodiag.load([folder])
    found = differences(trainer, run.table)
    assert {(split, step) for split, step, *_ in found} == \
        {("train", step) for step in range(1, 7)} | {("eval", 3), ("eval", 6)}
    assert_close(found)
    rewards = [item[4] for item in found if item[2].startswith("rewards/")]
    assert max(rewards) < ABSOLUTE_TOLERANCE


def test_gradient_accumulation_and_precomputed_reference(model_folder, tmp_path):
    # DPOConfig's defaults otherwise, so bf16 autocast is on.
    trainer, recorder = train(model_folder, tmp_path, per_device_train_batch_size=2,
                              gradient_accumulation_steps=2, max_steps=3, eval_steps=3,
                              precompute_ref_log_probs=True)
    recorder.close()
    (run,) = dpodiag.load([tmp_path / "dpodiag-pairs"])
    train_rows = run.table.filter(pl.col("split") == "train")
    assert train_rows["step"].value_counts().sort("step").rows() == [(step, 4) for step in range(3)]
    assert_close(differences(trainer, run.table))


def test_recording_leaves_training_unchanged(model_folder, recorded, tmp_path):
    trainer, _ = recorded
    plain, _ = train(model_folder, tmp_path, record=False, bf16=False)
    recorded_losses = [entry.get("loss") for entry in trainer.state.log_history]
    plain_losses = [entry.get("loss") for entry in plain.state.log_history]
    assert recorded_losses == plain_losses
    assert [e.get("eval_loss") for e in trainer.state.log_history] == \
        [e.get("eval_loss") for e in plain.state.log_history]


def test_rejects_other_trainers():
    with pytest.raises(UsageError, match="expected a trl.DPOTrainer"):
        record_pairs(object())


def test_rejects_unsupported_trl_version(monkeypatch):
    import trl

    monkeypatch.setattr(trl, "__version__", "0.28.0")
    with pytest.raises(UsageError, match="supports TRL 0.29 up to, not including, 2.0, found 0.28.0"):
        record_pairs(object())


def test_score_reproduces_trl_reference_logps(recorded, model_folder, tmp_path):
    from dpodiag.scoring import score_pairs

    _, folder = recorded
    (run,) = dpodiag.load([folder])
    eval_rows = run.table.filter((pl.col("split") == "eval") & (pl.col("step") == 3))
    dataset = tmp_path / "eval.jsonl"
    pl.DataFrame(reversal_pairs(8, seed=2)).write_ndjson(dataset)
    # The reference is the saved initial model; TRL scores the eval set in dataset order.
    scored = score_pairs(model_folder, dataset, device="cpu")
    for side in ("chosen", "rejected"):
        assert scored[f"policy_{side}_logps"].to_list() == \
            pytest.approx(eval_rows[f"reference_{side}_logps"].to_list(), abs=1e-5)
        assert scored[f"{side}_length"].to_list() == eval_rows[f"{side}_length"].to_list()


def test_rejects_second_recorder(recorded):
    trainer, _ = recorded
    with pytest.raises(UsageError, match="records its pairs already"):
        record_pairs(trainer)


@pytest.mark.parametrize("options, message", [
    ({"beta": 0.5}, r"beta is read from the trainer \(here 0.1\); set it in DPOConfig"),
    ({"extra_metadata": {"loss_type": "ipo"}}, "loss_type is read from the trainer"),
    ({"flush_every": 10}, "unknown option 'flush_every'; expected one of flush_rows"),
])
def test_rejects_options_the_trainer_gives(recorded, options, message):
    trainer, _ = recorded
    with pytest.raises(UsageError, match=message):
        record_pairs(trainer, **options)
