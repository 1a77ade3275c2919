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
    # Train has not learned a direction yet: a low eval accuracy says nothing about labels.
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
