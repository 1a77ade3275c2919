"""Findings on real published trainer logs: what a careful engineer raises, and the false alarms
that must not appear."""

from pathlib import Path

import pytest

import dpodiag
from synthetic import codes

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "real_logs"

# Fixture -> (codes that must appear, codes that must not appear). Errors not listed in the first
# set must not appear either.
CASES = {
    # Every reward and logp is NaN while the loss reads exactly 0.0.
    "trl-dpo-llama2-nan-collapse.trainer_state.json": ({"non-finite-values", "too-little-data"}, set()),
    "trl-dpo-llama2-nan-collapse.stdout.log": ({"non-finite-values"}, set()),
    # grad_norm 0 at every step: nothing trains, and the reference is not at fault.
    "translation-dpo-gams9b-nograd-stuck.wandb_output.log": ({"no-learning-signal"}, {"reference-tracks-policy"}),
    "translation-dpo-gams9b-nograd-stuck.run.wandb": ({"no-learning-signal"}, {"reference-tracks-policy"}),
    # Over-optimisation: eval loss bottoms out at epoch 1, margins explode, chosen reward falls.
    "translation-dpo-gams9b-lr4e-6-overopt.wandb_output.log": (
        {"overfitting", "margin-saturation", "likelihood-displacement"}, set()),
    # A noisy but healthy run: per-step values jump, no error and no saturation.
    "translation-dpo-gams9b-chosen-reward-up.wandb_output.log": (set(), {"margin-saturation", "instability"}),
    # cDPO plateaus at its optimum margin ln((1-eps)/eps); that is not saturation.
    "trl-cdpo-ls0.05-llama31-8b.console_log.md": (set(), {"margin-saturation"}),
    # A 4-step smoke test: too little data, no verdict.
    "trl-new-dpo-qwen-qlora-smoke4steps.dpo_history.json": ({"too-little-data"}, set()),
    # Mostly healthy, but the chosen log-prob falls while the margin grows.
    "trl-new-dpo-qwen-qlora-jsonextract.dpo_history.json": ({"likelihood-displacement"}, set()),
    # Loss reaches 1e-14 with margins near 32.
    "scratch-dpo-llama31-8b-html-saturated.metrics.csv": ({"margin-saturation"}, set()),
    # DPOP keeps the chosen log-prob above the reference by design; its loss is not plain DPO.
    "scratch-dpop-llama31-8b-content.metrics.csv": (set(), {"likelihood-displacement"}),
    "scratch-dpop-llama31-8b-content.batch_records.json": (set(), set()),
    "mlx-lm-dpo-saturated.pr1209_excerpt.txt": ({"margin-saturation"}, set()),
    "openrlhf-dpo-gemma2-9b-saturated.wandb-summary.json": ({"margin-saturation", "likelihood-displacement"}, set()),
    # ORPO is reference-free and logs per-token log-probs: no step-0 identity, no DPO bounds.
    "llamafactory-orpo-glm4-recsys.trainer_state.json": (set(), set()),
    "llamafactory-orpo-glm4-recsys.trainer_log.jsonl": (set(), set()),
    # SimPO with a learning rate 50x too high: the per-token log-probs collapse.
    "adaptive-simpo-llama3-8b-lr5e-5-logp-collapse.console.log": ({"likelihood-displacement"}, set()),
    "adaptive-simpo-llama3-8b-lr5e-5-logp-collapse.events.out.tfevents": ({"likelihood-displacement"}, set()),
    "trl-kto-nan-rewards.issue1447_excerpt.txt": ({"non-finite-values"}, set()),
    "trl-dpo-lr1e-4-unstable.issue1236_excerpt.txt": ({"too-little-data"}, set()),
    "trl-dpo-qwen05b-lowvram-noisy.log_history.json": (set(), set()),
    "eric-dpo-learning-dynamics-pythia410m.prob_train_metrics.jsonl": (set(), set()),
    # A GRPO log is not preference optimisation: every check skips it.
    "CONTROL-trl-grpo-not-dpo.trainer_state.json": (set(), {"too-little-data", "non-finite-values"}),
}


@pytest.mark.parametrize("name", CASES)
def test_real_log_findings(name):
    if name.endswith(".tfevents"):
        pytest.importorskip("tensorboard")
    if name.endswith(".wandb"):
        pytest.importorskip("wandb")
    must, must_not = CASES[name]
    diagnosis = dpodiag.diagnose(dpodiag.load(FIXTURES / name), device="cpu")
    found = codes(diagnosis.findings)
    assert must <= found
    assert not (must_not & found)
    assert codes(diagnosis.findings, "error") <= must
    for finding in diagnosis.findings:
        # A message starts like a sentence, or with a column name such as grad_norm.
        first = finding.message.split()[0]
        assert first[0].isupper() or first[0].isdigit() or "_" in first or "/" in first, finding.message


def test_grpo_control_says_why_it_is_skipped():
    diagnosis = dpodiag.diagnose(dpodiag.load(FIXTURES / "CONTROL-trl-grpo-not-dpo.trainer_state.json"))
    (skipped,) = [f for f in diagnosis.findings if f.code == "checks-skipped"]
    assert "not preference optimisation" in skipped.message


@pytest.mark.parametrize("name", ["openrlhf-dpo-gemma2-9b-saturated.wandb-summary.json",
                                  "llamafactory-orpo-glm4-recsys.all_results.json"])
def test_summary_file_asks_for_history(name):
    diagnosis = dpodiag.diagnose(dpodiag.load(FIXTURES / name), device="cpu")
    (short,) = [f for f in diagnosis.findings if f.code == "too-little-data"]
    assert short.title == "Final values only: trends cannot be judged"
    assert "pass the run's history" in short.message


def test_short_history_counts_steps():
    name = "trl-new-dpo-qwen-qlora-smoke4steps.dpo_history.json"
    diagnosis = dpodiag.diagnose(dpodiag.load(FIXTURES / name), device="cpu")
    (short,) = [f for f in diagnosis.findings if f.code == "too-little-data"]
    assert short.message.startswith("The log has 4 train step(s)")
