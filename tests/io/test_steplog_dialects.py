"""The dialect registry: detection from key names, split prefixes and name heuristics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpodiag.dialects import (
    CANONICAL_METRICS, DIALECTS, detect_dialect, get_dialect, guess_canonical, split_key,
)
from dpodiag.errors import UsageError
from dpodiag.io.steplogs import read_step_log
from dpodiag.schema import STEP_METRICS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "real_logs"
TRL_2024 = ["loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected",
            "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected",
            "logits/chosen", "logits/rejected", "epoch"]

DETECTION_CASES = [
    (TRL_2024, {}, "trl"),
    (TRL_2024, {"transformers_version": "4.45.2"}, "trl-legacy"),
    ([k for k in TRL_2024 if k != "grad_norm"], {}, "trl-legacy"),
    (["loss", "rewards/chosen", "logps/rejected", "logps/chosen", "grad_norm"], {}, "trl-legacy"),
    ([*TRL_2024, "entropy", "mean_token_accuracy", "num_tokens"], {}, "trl-v1"),
    ([*TRL_2024, "log_odds_ratio", "log_odds_chosen", "nll_loss"], {}, "trl-orpo"),
    ([*TRL_2024, "avg_logps/chosen", "avg_logps/rejected", "objective/gamma"], {}, "trl-simpo"),
    (["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "kl"], {}, "trl-kto"),
    (["loss", "kl", "reward", "reward_std", "rewards/accuracy_fn/mean"], {}, "trl-grpo"),
    (["current_steps", "total_steps", "loss", "accuracy"], {}, "llamafactory"),
    ([*TRL_2024, "sft_loss", "odds_ratio_loss"], {}, "llamafactory"),
    (["train/loss", "train/acc", "train/chosen_reward", "train/reject_reward"], {}, "openrlhf"),
    (["step", "loss", "chosen_reward", "rejected_reward", "reward_gap"], {}, "generic"),
    (["loss", "lr", "rewards/chosen", "log_probs/chosen", "log_probs/rejected"], {}, "torchtune"),
    (["train/loss", "train/acc", "train/rewards_chosen_mean", "train/rewards_all_mean"], {},
     "nemo-aligner"),
    (["loss", "accuracy", "rewards_chosen_mean", "num_valid_samples"], {}, "nemo-rl"),
    (["training_step", "train_loss", "logps/chosen", "rewards/accuracy"], {}, "open-instruct"),
    (["rewards_train/chosen", "logps_train/chosen", "loss/train", "counters/examples"], {},
     "eric-mitchell-dpo"),
    (["iter", "loss", "chosen_reward"], {"format": "mlx-lm-console"}, "mlx-lm"),
    (["epoch_frac", "step", "train_loss", "val_loss"], {}, "generic"),
]


@pytest.mark.parametrize(("keys", "meta", "expected"), DETECTION_CASES)
def test_detect_dialect(keys, meta, expected):
    assert detect_dialect(keys, meta).name == expected


def test_required_dialects_registered():
    required = {"trl-legacy", "trl", "trl-v1", "trl-cpo", "trl-simpo", "trl-orpo",
                "llamafactory", "openrlhf", "torchtune", "nemo-aligner", "nemo-rl", "mlx-lm",
                "open-instruct", "eric-mitchell-dpo", "generic"}
    assert required <= set(DIALECTS)


def test_dialect_aliases_target_canonical_names():
    for dialect in DIALECTS.values():
        assert set(dialect.aliases.values()) <= set(CANONICAL_METRICS), dialect.name


def test_dialect_facts():
    assert not get_dialect("nemo-rl").rewards_beta_scaled
    assert get_dialect("trl-legacy").reduction == "rank-local-window-mean"
    assert get_dialect("openrlhf").reduction == "last-micro-batch"
    assert get_dialect("trl").loss_decimals == 4
    assert get_dialect("eric-mitchell-dpo").step_unit == "examples"
    assert not get_dialect("trl-grpo").preference
    assert not get_dialect("trl-kto").paired


@pytest.mark.parametrize(("dialect", "loss_type", "expected"), [
    ("trl-legacy", "ipo", "mean"), ("trl", "ipo", "sum"), ("trl", "sigmoid", "sum"),
    ("llamafactory", "orpo", "mean"), ("llamafactory", "sigmoid", "sum"),
    ("trl-simpo", "simpo", "mean"), ("trl-cpo", "sigmoid", "sum"), ("trl-orpo", "orpo", "mean"),
])
def test_logps_normalisation(dialect, loss_type, expected):
    assert get_dialect(dialect).logps_normalisation(loss_type) == expected


def test_unknown_dialect_lists_names():
    with pytest.raises(UsageError, match=r"unknown dialect 'trl2'; use one of: .*nemo-rl.*generic"):
        get_dialect("trl2")


@pytest.mark.parametrize(("key", "expected"), [
    ("eval_rewards/chosen", ("eval", "rewards/chosen")),
    ("eval/rewards/margins", ("eval", "rewards/margins")),
    ("eval/eval_loss", ("eval", "loss")),
    ("train/rewards/chosen", ("train", "rewards/chosen")),
    ("val_reward_margin", ("eval", "reward_margin")),
    ("validation-default/loss", ("eval", "loss")),
    ("rewards_train/chosen", ("train", "rewards/chosen")),
    ("loss/eval", ("eval", "loss")),
    ("rewards/chosen", (None, "rewards/chosen")),
    ("mean_token_accuracy", (None, "mean_token_accuracy")),
])
def test_split_key(key, expected):
    assert split_key(key) == expected


@pytest.mark.parametrize(("name", "expected"), [
    ("reward_margin", "rewards_margins"), ("reward_accuracy", "rewards_accuracies"),
    ("policy_chosen_logprobs", "logps_chosen"), ("reference_rejected_logprobs",
                                                 "ref_logps_rejected"),
    ("epoch_frac", "epoch"), ("lr", "learning_rate"), ("loss_change", None), ("batch_idx", None),
])
def test_guess_canonical(name, expected):
    assert guess_canonical(name) == expected


def test_named_dialect_overrides_detection():
    path = FIXTURES / "trl-cdpo-ls0.05-llama31-8b.console_log.md"
    run = read_step_log(path, dialect="trl-legacy")
    assert run.dialect == "trl-legacy"
    assert set(STEP_METRICS) - {"nll_loss"} <= set(run.table.columns)


@pytest.mark.parametrize(("keys", "reason"), [
    ([k for k in TRL_2024 if k != "grad_norm"], "because it logs no grad_norm"),
    (["loss", "rewards/chosen", "logps/rejected", "logps/chosen", "grad_norm"],
     "because it logs logps/rejected before logps/chosen"),
    (TRL_2024, None),
])
def test_legacy_dialect_note_gives_reason(tmp_path, keys, reason):
    path = tmp_path / "trainer_state.json"
    # Distinct values per key and step, so that no ratio of two keys is constant.
    records = [{**{key: index + 0.1 * step * step for index, key in enumerate(keys)}, "step": step}
               for step in (1, 2, 3)]
    path.write_text(json.dumps({"log_history": records}))
    notes = [note for note in read_step_log(path).notes if "trl-legacy" in note]
    if reason is None:
        assert notes == []
    else:
        (note,) = notes
        assert reason in note
        assert note.endswith("pass --dialect trl if it comes from TRL 0.14 or later")


def test_loss_type_from_keys_says_how(tmp_path):
    path = tmp_path / "trainer_state.json"
    keys = [*TRL_2024, "log_odds_ratio", "log_odds_chosen", "nll_loss"]
    records = [{**{key: index + 0.1 * step * step for index, key in enumerate(keys)}, "step": step}
               for step in (1, 2, 3)]
    path.write_text(json.dumps({"log_history": records}))
    run = read_step_log(path)
    assert (run.meta.loss_type, run.meta.source_of("loss_type")) == ("orpo", "inferred")
    assert run.meta.inference["loss_type"]["method"] == "its keys are those of the trl-orpo dialect"
