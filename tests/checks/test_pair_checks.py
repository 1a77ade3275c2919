"""Each pair-level check on a case where it fires and one where it must not."""

import numpy as np
import polars as pl
import pytest

from synthetic import codes, make_pairs, softplus


def test_healthy_run_has_no_error(check_frame):
    findings = check_frame(make_pairs(eval_every=5))
    assert codes(findings, "error") == set()
    assert codes(findings, "warning") == set()


# reference-tracks-policy

def tracking(frame):
    return frame.with_columns(reference_chosen_logps=pl.col("policy_chosen_logps"),
                              reference_rejected_logps=pl.col("policy_rejected_logps"),
                              loss=pl.lit(np.log(2)))


def test_reference_tracks_policy_fires(check_frame):
    findings = check_frame(tracking(make_pairs()))
    (finding,) = [f for f in findings if f.code == "reference-tracks-policy"]
    assert finding.evidence["zero_logratio_share"] == 1.0
    assert finding.evidence["policy_logps_change"] > 1


def test_reference_tracks_policy_silent_when_policy_frozen(check_frame):
    # A policy that never moves has zero log-ratios legitimately: nothing learns, nothing is wrong
    # with the reference.
    frozen = make_pairs(chosen_drift=0, rejected_drift=0, noise=0)
    assert "reference-tracks-policy" not in codes(check_frame(frozen))


def test_reference_tracks_policy_skipped_for_reference_free_loss(check_frame):
    findings = check_frame(tracking(make_pairs()), loss_type="simpo", beta=2.0)
    assert "reference-tracks-policy" not in codes(findings)
    skipped = [f for f in findings if f.code == "checks-skipped"][0]
    assert "reference-free" in skipped.evidence["skipped"]["reference-tracks-policy"]


def scored_once(frame):
    """Every scoring under its own example id: one epoch, no evaluation set scored twice."""
    return frame.with_columns(example_id=pl.format("{}-{}", "example_id", "step"))


def test_tracks_policy_without_repeated_examples(check_frame):
    findings = check_frame(scored_once(tracking(make_pairs(eval_every=5))))
    (finding,) = [f for f in findings if f.code == "reference-tracks-policy"]
    assert finding.evidence["policy_logps_change"] is None
    assert "cannot tell whether the policy moved" in finding.message


# no-learning-signal

def test_no_learning_signal_frozen_policy(check_frame):
    frozen = make_pairs(chosen_drift=0, rejected_drift=0, noise=0)
    (finding,) = [f for f in check_frame(frozen) if f.code == "no-learning-signal"]
    assert finding.evidence["steps"] == 30


def test_no_learning_signal_single_scorings(check_frame):
    findings = check_frame(scored_once(make_pairs()))
    assert "no-learning-signal" not in codes(findings)
    assert codes(findings, "error") == set()


def test_no_learning_signal_repeated_rows(check_frame):
    # The same pairs logged twice at each step (two writers) are one scoring of each example.
    once = scored_once(make_pairs())
    assert "no-learning-signal" not in codes(check_frame(pl.concat([once, once])))


def test_no_learning_signal_skip_names_ids(check_frame):
    # Without example ids no example can be followed across steps, and the skip reason names them.
    findings = check_frame(make_pairs().drop("example_id"))
    (skipped,) = [f for f in findings if f.code == "checks-skipped"]
    assert "example_id" in skipped.evidence["skipped"]["no-learning-signal"]


# reference-missing

def test_reference_missing_fires_without_reference_columns(check_frame):
    frame = make_pairs().drop("reference_chosen_logps", "reference_rejected_logps", "loss")
    assert "reference-missing" in codes(check_frame(frame), "error")


def test_reference_missing_fires_on_all_zero_reference(check_frame):
    frame = make_pairs().with_columns(reference_chosen_logps=pl.lit(0.0), reference_rejected_logps=pl.lit(0.0))
    assert "reference-missing" in codes(check_frame(frame.drop("loss")), "error")


def test_reference_missing_silent_for_simpo(check_frame):
    frame = make_pairs().drop("reference_chosen_logps", "reference_rejected_logps", "loss")
    assert "reference-missing" not in codes(check_frame(frame, loss_type="simpo", beta=2.0))


# reference-not-initial-policy

def test_reference_not_initial_policy_fires(check_frame):
    frame = make_pairs().with_columns(reference_chosen_logps=pl.col("reference_chosen_logps") - 3.0)
    findings = check_frame(frame.drop("loss"))
    (finding,) = [f for f in findings if f.code == "reference-not-initial-policy"]
    assert finding.step == 0
    assert finding.evidence["median_abs_logratio"] > finding.evidence["tolerance"]


def test_reference_not_initial_policy_tolerates_bf16_noise(check_frame):
    # bf16 scoring of the same weights: relative error well under 1% of the sequence log-prob.
    rng = np.random.default_rng(3)
    frame = make_pairs()
    noise = pl.Series(rng.normal(0, 0.02, frame.height))
    frame = frame.with_columns(reference_chosen_logps=pl.col("reference_chosen_logps") + noise)
    assert "reference-not-initial-policy" not in codes(check_frame(frame.drop("loss")))


def test_reference_not_initial_policy_skipped_without_step_zero(check_frame):
    frame = make_pairs(start_step=10).with_columns(reference_chosen_logps=pl.col("reference_chosen_logps") - 3)
    findings = check_frame(frame.drop("loss"))
    assert "reference-not-initial-policy" not in codes(findings)


# preference-direction-inverted

def test_preference_inverted_fires(check_frame):
    frame = make_pairs(chosen_drift=-0.3, rejected_drift=0.1)
    # The sign error: the trainer minimised softplus(+beta*h), which falls as h goes negative.
    frame = frame.with_columns(loss=softplus(0.1 * ((pl.col("policy_chosen_logps") - pl.col("reference_chosen_logps"))
                                                   - (pl.col("policy_rejected_logps") - pl.col("reference_rejected_logps")))))
    findings = check_frame(frame)
    (finding,) = [f for f in findings if f.code == "preference-direction-inverted"]
    assert finding.evidence["late_reward_accuracy"] < 0.4
    assert finding.evidence["late_logged_loss"] < finding.evidence["early_logged_loss"]


def test_preference_inverted_silent_on_slow_healthy_run(check_frame):
    # Learning slowly with noise: accuracy near chance early is not an inversion.
    frame = make_pairs(chosen_drift=0.0, rejected_drift=-0.02, noise=0.5, seed=4)
    assert "preference-direction-inverted" not in codes(check_frame(frame))


# beta-mismatch, loss-scale-mismatch, loss-type-mismatch, loss-mismatch

def test_beta_mismatch_fires(check_frame):
    findings = check_frame(make_pairs(loss_beta=0.5))
    (finding,) = [f for f in findings if f.code == "beta-mismatch"]
    assert finding.evidence["fitted_beta"] == pytest.approx(0.5, rel=1e-3)
    assert "loss-scale-mismatch" not in codes(findings)


def test_beta_mismatch_silent_with_rounded_loss(check_frame):
    # transformers 4.x rounds logged losses to 4 decimals.
    frame = make_pairs().with_columns(pl.col("loss").round(4))
    assert codes(check_frame(frame), "error") == set()


def test_loss_scale_mismatch_fires(check_frame):
    frame = make_pairs().with_columns(pl.col("loss") / 4)
    findings = check_frame(frame)
    (finding,) = [f for f in findings if f.code == "loss-scale-mismatch"]
    assert finding.evidence["scale"] == pytest.approx(0.25, rel=1e-6)
    assert "beta-mismatch" not in codes(findings)


def test_loss_type_mismatch_fires_for_hinge_logged_as_sigmoid(check_frame):
    frame = make_pairs().with_columns(
        loss=(1 - 0.1 * ((pl.col("policy_chosen_logps") - pl.col("reference_chosen_logps"))
                         - (pl.col("policy_rejected_logps") - pl.col("reference_rejected_logps")))).clip(0))
    findings = check_frame(frame)
    (finding,) = [f for f in findings if f.code == "loss-type-mismatch"]
    assert finding.evidence["fitted"] == "hinge"


def test_loss_mismatch_fires_when_nothing_explains(check_frame):
    rng = np.random.default_rng(0)
    frame = make_pairs()
    frame = frame.with_columns(loss=pl.Series(rng.uniform(0, 2, frame.height)))
    assert "loss-mismatch" in codes(check_frame(frame), "error")


def test_batch_level_loss_is_compared_per_step(check_frame):
    frame = make_pairs(noise=0.3).with_columns(pl.col("loss").mean().over("step"))
    assert codes(check_frame(frame), "error") == set()


# non-finite-values

def test_non_finite_values_fires(check_frame):
    frame = make_pairs().with_columns(
        pl.when(pl.col("step") == 7).then(float("nan")).otherwise(pl.col("policy_chosen_logps"))
        .alias("policy_chosen_logps"))
    (finding,) = [f for f in check_frame(frame) if f.code == "non-finite-values"]
    assert finding.step == 7
    assert finding.evidence["columns"]["policy_chosen_logps"] == 16


def test_non_finite_values_silent_on_finite_log(check_frame):
    assert "non-finite-values" not in codes(check_frame(make_pairs()))


# invalid-logprobs

@pytest.mark.parametrize("column,value", [("policy_chosen_logps", 0.0), ("reference_rejected_logps", 3.5),
                                          ("chosen_length", 0.0)])
def test_invalid_logprobs_fires(check_frame, column, value):
    frame = make_pairs().with_columns(
        pl.when(pl.col("step") == 2).then(value).otherwise(pl.col(column)).alias(column)).drop("loss")
    (finding,) = [f for f in check_frame(frame) if f.code == "invalid-logprobs"]
    assert column in finding.evidence["problems"]


def test_invalid_logprobs_silent_on_negative_logps(check_frame):
    assert "invalid-logprobs" not in codes(check_frame(make_pairs()))


# too-little-data

def test_too_little_data_fires_on_short_run(check_frame):
    findings = check_frame(make_pairs(steps=3, pairs=4))
    assert "too-little-data" in codes(findings, "warning")
    skipped = [f for f in findings if f.code == "checks-skipped"][0]
    assert "preference-direction-inverted" in skipped.evidence["skipped"]


def test_too_little_data_silent_on_long_run(check_frame):
    assert "too-little-data" not in codes(check_frame(make_pairs()))


def test_per_token_logps_are_inferred_as_mean(check_frame):
    frame = make_pairs().with_columns(
        (pl.col(c) / pl.col("chosen_length" if "chosen" in c else "rejected_length")).alias(c)
        for c in ["policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps",
                  "reference_rejected_logps"]).drop("loss")
    findings = check_frame(frame)
    (finding,) = [f for f in findings if f.code == "normalisation-inferred"]
    assert finding.evidence["value"] == "mean"
    assert "mask-or-padding-suspect" not in codes(findings)


# degenerate-pairs

def test_degenerate_pairs_fire_on_identical_responses(check_frame):
    frame = make_pairs().with_columns(policy_rejected_logps=pl.col("policy_chosen_logps"),
                                      reference_rejected_logps=pl.col("reference_chosen_logps"))
    (finding,) = [f for f in check_frame(frame.drop("loss")) if f.code == "degenerate-pairs"]
    assert finding.evidence["share"] == 1.0


def test_degenerate_pairs_collapsed_policy(check_frame):
    # A policy whose next-token distribution is uniform gives both responses of equal length the
    # same log-prob; the reference still scores them apart.
    frame = make_pairs().with_columns(policy_rejected_logps=pl.col("policy_chosen_logps"))
    assert "degenerate-pairs" not in codes(check_frame(frame.drop("loss")))


# loss-scale-mismatch

def test_loss_scale_zero_loss(check_frame):
    # The eval loss is 0 on every pair, as hinge logs past its margin: k = 0 fits, and is no scale.
    frame = make_pairs(eval_every=5).with_columns(
        loss=pl.when(pl.col("split") == "eval").then(0.0).otherwise(pl.col("loss")))
    findings = check_frame(frame)
    assert "loss-scale-mismatch" not in codes(findings)


def test_loss_scale_mismatch_fires_on_a_quarter_loss(check_frame):
    findings = check_frame(make_pairs(eval_every=5).with_columns(loss=pl.col("loss") / 4))
    (finding,) = [f for f in findings if f.code == "loss-scale-mismatch"]
    assert finding.evidence["scale"] == pytest.approx(0.25)


# reference-not-frozen

def padded_rejected(frame: pl.DataFrame) -> pl.DataFrame:
    """Pad tokens counted in the rejected log-probs, 3 nats each, with a batch-dependent count."""
    pads = pl.Series(np.random.default_rng(4).integers(0, 6, frame.height).astype(float))
    return frame.with_columns(reference_rejected_logps=pl.col("reference_rejected_logps") - 3.0 * pads,
                              policy_rejected_logps=pl.col("policy_rejected_logps") - 3.0 * pads)


def test_reference_not_frozen_fires_on_the_rejected_side(check_frame):
    findings = check_frame(padded_rejected(make_pairs(eval_every=5)).drop("loss"))
    (finding,) = [f for f in findings if f.code == "reference-not-frozen"]
    assert finding.evidence["side"] == "rejected"


def test_reference_not_frozen_silent_on_a_frozen_reference(check_frame):
    assert "reference-not-frozen" not in codes(check_frame(make_pairs(eval_every=5)))


# non-finite-values

def test_non_finite_values_name_null_inputs(check_frame):
    frame = make_pairs().with_row_index("row").with_columns(
        policy_rejected_logps=pl.when(pl.col("row").is_in([40, 41])).then(None)
        .otherwise(pl.col("policy_rejected_logps"))).drop("row")
    (finding,) = [f for f in check_frame(frame) if f.code == "non-finite-values"]
    assert finding.evidence["columns"] == {"rejected_logratio": 2}
    assert finding.evidence["null_inputs"] == {"policy_rejected_logps": 2}
    assert "nulls in the input columns policy_rejected_logps (2)" in finding.message


def test_non_finite_values_silent_on_finite_pairs(check_frame):
    assert "non-finite-values" not in codes(check_frame(make_pairs()))


# mask-or-padding-suspect

def test_mask_suspect_per_token_means(check_frame):
    # Per-token mean log-probs (a few nats, no length effect) declared as sums.
    frame = make_pairs(pairs=64).with_columns(
        *[(pl.col(f"{kind}_{side}_logps") / pl.col(f"{side}_length")).alias(f"{kind}_{side}_logps")
          for kind in ("policy", "reference") for side in ("chosen", "rejected")]).drop("loss")
    findings = check_frame(frame, logps_normalisation="sum")
    (finding,) = [f for f in findings if f.code == "mask-or-padding-suspect"]
    assert "record logps_normalisation 'mean'" in finding.message
    assert "mask-or-padding-suspect" not in codes(check_frame(frame, logps_normalisation="mean"))


# reference-not-initial-policy

def test_not_initial_equal_offsets(check_frame):
    # A reference 2 nats below the policy on chosen and rejected: the margin, so the loss, is
    # unchanged at step 0, while the log-ratios are not 0.
    frame = make_pairs().with_columns(reference_chosen_logps=pl.col("reference_chosen_logps") - 2,
                                      reference_rejected_logps=pl.col("reference_rejected_logps") - 2)
    (finding,) = [f for f in check_frame(frame) if f.code == "reference-not-initial-policy"]
    assert "the zero-margin value" in finding.message
    assert "reference-not-initial-policy" not in codes(check_frame(make_pairs()))


def test_not_frozen_rejected_size(check_frame):
    # Long rejected responses (5 x the log-probs) with up to 0.4 nats of jitter: beyond 1%
    # of the chosen log-probs, within 1% of the rejected ones, as bf16 rounding leaves them.
    jitter = pl.Series(np.random.default_rng(5).uniform(-0.2, 0.2, make_pairs(eval_every=5).height))
    frame = make_pairs(eval_every=5).with_columns(
        reference_rejected_logps=5 * pl.col("reference_rejected_logps") + jitter,
        policy_rejected_logps=5 * pl.col("policy_rejected_logps") + jitter).drop("loss")
    assert "reference-not-frozen" not in codes(check_frame(frame))
