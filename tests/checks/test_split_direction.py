"""preference-direction-inverted when train and eval disagree on the preferred response, against
overfitting, which lowers the eval accuracy towards chance but not below it."""

import numpy as np
import polars as pl

from cases import healthy_steps, step_run, with_evals
from dpodiag.checks import run_checks
from dpodiag.pipeline import analyse
from synthetic import codes, make_pairs

EVAL_STEPS = [5, 10, 15, 20, 25, 30]


def check_steps(rows):
    return run_checks(analyse(step_run(rows, beta=0.1, loss_type="sigmoid"), device="cpu"))


def swapped_eval_steps():
    """Eval labels swapped: the eval margin is the negated train margin, its accuracy falls."""
    margin = -0.05 * np.array(EVAL_STEPS)
    return with_evals(healthy_steps(), {
        "step": EVAL_STEPS, "loss": np.log1p(np.exp(-margin)), "rewards_margins": margin,
        "rewards_accuracies": [0.45, 0.35, 0.3, 0.25, 0.2, 0.15]})


def overfit_steps():
    """Eval loss rises after step 15 and eval accuracy slips towards chance, above it."""
    return with_evals(healthy_steps(), {
        "step": EVAL_STEPS, "loss": [0.6, 0.5, 0.45, 0.55, 0.65, 0.75],
        "rewards_margins": [0.2, 0.4, 0.5, 0.4, 0.3, 0.2],
        "rewards_accuracies": [0.6, 0.65, 0.66, 0.6, 0.57, 0.55]})


def test_swapped_eval_labels_are_an_error_not_overfitting():
    findings = check_steps(swapped_eval_steps())
    (finding,) = [f for f in findings if f.code == "preference-direction-inverted"]
    assert finding.split == "eval"
    assert finding.evidence["eval_late_accuracy"] < 0.4 < finding.evidence["train_late_accuracy"]
    assert "overfitting" not in codes(findings)


def test_overfitting_is_not_an_inversion():
    findings = check_steps(overfit_steps())
    assert "overfitting" in codes(findings, "warning")
    assert "preference-direction-inverted" not in codes(findings)


def test_eval_below_chance_without_learning_is_silent():
    # Train has not learned a direction yet, so a low eval accuracy is no evidence about labels.
    rows = swapped_eval_steps()
    flat = {**rows, "rewards_margins": [0.0 if split == "train" else m
                                        for split, m in zip(rows["split"], rows["rewards_margins"])]}
    assert "preference-direction-inverted" not in codes(check_steps(flat))


def test_pair_log_with_eval_labels_swapped(check_frame):
    frame = make_pairs(eval_every=3).drop("loss")
    swap = pl.col("split") == "eval"
    swapped = frame.with_columns(
        *[pl.when(swap).then(pl.col(f"{kind}_rejected_logps")).otherwise(pl.col(f"{kind}_chosen_logps"))
          .alias(f"{kind}_chosen_logps") for kind in ("policy", "reference")],
        *[pl.when(swap).then(pl.col(f"{kind}_chosen_logps")).otherwise(pl.col(f"{kind}_rejected_logps"))
          .alias(f"{kind}_rejected_logps") for kind in ("policy", "reference")])
    findings = check_frame(swapped)
    assert [f.split for f in findings if f.code == "preference-direction-inverted"] == ["eval"]
    assert "preference-direction-inverted" not in codes(check_frame(frame))


def inverted_train_steps(loss_end: float) -> dict:
    """Train margins falling to -1.5 with accuracy 0.05 at the end, the loss rising to `loss_end`."""
    steps = np.arange(1, 31)
    margin = -0.05 * steps
    rows = healthy_steps(rewards_margins=margin, rewards_chosen=0.3 * margin, rewards_rejected=-0.7 * margin,
                         rewards_accuracies=np.maximum(0.5 - 0.3 * steps / 6, 0.05),
                         loss=np.linspace(np.log(2), loss_end, 30))
    return rows


def test_train_records_swapped_while_eval_learns():
    rows = with_evals(inverted_train_steps(1.7), {
        "step": EVAL_STEPS, "loss": np.log1p(np.exp(-0.05 * np.array(EVAL_STEPS))),
        "rewards_margins": 0.05 * np.array(EVAL_STEPS), "rewards_accuracies": [0.6, 0.7, 0.8, 0.9, 0.95, 1.0]})
    findings = check_steps(rows)
    (finding,) = [f for f in findings if f.code == "preference-direction-inverted"]
    assert finding.split == "train"
    assert finding.title == "Train and eval disagree on which response is preferred"
    assert "overfitting" not in codes(findings)


def test_loss_climbing_with_the_inversion():
    (finding,) = [f for f in check_steps(inverted_train_steps(1.7)) if f.code == "preference-direction-inverted"]
    assert finding.title == "Training increases its own loss"
    assert finding.evidence["late_logged_loss"] > 1.5


def test_slight_drift_before_learning_is_silent():
    # A run that has not learned yet: margin -0.1, accuracy 0.35, loss 0.69 -> 0.74.
    steps = np.arange(1, 31)
    margin = -0.1 * steps / 30
    rows = healthy_steps(rewards_margins=margin, rewards_chosen=0.5 * margin, rewards_rejected=-0.5 * margin,
                         rewards_accuracies=np.full(30, 0.35), loss=np.log1p(np.exp(-margin)))
    assert "preference-direction-inverted" not in codes(check_steps(rows))


def test_eval_drifting_near_zero_is_not_a_swap():
    # A small eval set that does not generalise: accuracy 0.38 at the end and a margin of -0.05
    # while train reaches +1.5. Swapped labels would mirror the train margin.
    margin = -0.01 * np.arange(1, 7)
    rows = with_evals(healthy_steps(), {
        "step": EVAL_STEPS, "loss": np.log1p(np.exp(-margin)), "rewards_margins": margin,
        "rewards_accuracies": [0.5, 0.5, 0.38, 0.38, 0.38, 0.38]})
    assert "preference-direction-inverted" not in codes(check_steps(rows))
