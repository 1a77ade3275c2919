"""One case where each registered check fires and one where it must not.

Each case builds runs (pair logs from the formulas or the sample runs, step tables in TRL's
dialect) and names the check code it is about. `test_registry.py` requires a case pair for every
code in the registry and pushes each case through the checks, the JSON output and the report.
"""

from __future__ import annotations

import numpy as np
import polars as pl

import dpodiag
from dpodiag.schema import Run, RunMeta
from synthetic import SAMPLE_LOGS, make_pairs, softplus


def pair_run(frame: pl.DataFrame, name: str = "case", **meta) -> Run:
    meta = {"beta": 0.1, "loss_type": "sigmoid", **meta}
    frame = frame.with_columns(run=pl.lit(name))
    if "split" not in frame.columns:
        frame = frame.with_columns(split=pl.lit("train"))
    return Run(name, "memory", "pairs", frame, RunMeta(**{k: v for k, v in meta.items() if v is not None}),
               "parquet", column_mapping={c: c for c in frame.columns})


def step_run(rows: dict, name: str = "case", dialect: str = "trl", **meta) -> Run:
    table = pl.DataFrame(rows).with_columns(run=pl.lit(name))
    if "split" not in table.columns:
        table = table.with_columns(split=pl.lit("train"))
    table = table.with_columns(record=pl.int_range(pl.len(), dtype=pl.Int64),
                               step=pl.col("step").cast(pl.Int64))
    run_meta = RunMeta()
    run_meta.update(meta, "flag")
    return Run(name, "memory", "steps", table, run_meta, "trainer-state", dialect=dialect)


def sample(name: str) -> Run:
    return dpodiag.load(SAMPLE_LOGS / f"{name}.parquet")[0]


def healthy_steps(n: int = 30, **overrides) -> dict:
    """A TRL step log of a healthy run: margins grow, loss falls, accuracy rises."""
    steps = np.arange(1, n + 1)
    margin = 0.05 * steps
    rows = {"step": steps, "loss": np.round(softplus(-margin) + 0.02, 4),
            "rewards_chosen": 0.3 * margin, "rewards_rejected": -0.7 * margin, "rewards_margins": margin,
            "rewards_accuracies": np.minimum(0.5 + 0.3 * margin, 0.9),
            "logps_chosen": -100 + 3 * margin, "logps_rejected": -110 - 7 * margin,
            "grad_norm": 5.0 + np.sin(steps)}
    rows.update(overrides)
    return rows


def with_evals(rows: dict, evals: dict) -> dict:
    """Stack eval records (same columns) after the train records."""
    train = pl.DataFrame(rows).with_columns(split=pl.lit("train"))
    evaluation = pl.DataFrame(evals).with_columns(split=pl.lit("eval"))
    return pl.concat([train, evaluation], how="diagonal_relaxed").to_dict(as_series=False)


def _inverted(frame):
    h = (pl.col("policy_chosen_logps") - pl.col("reference_chosen_logps")) - (
        pl.col("policy_rejected_logps") - pl.col("reference_rejected_logps"))
    return frame.with_columns(loss=softplus(0.1 * h))


def _frozen_eval_steps():
    rows = healthy_steps()
    fixed = {"step": [10, 20, 30], "loss": [0.6] * 3, "rewards_chosen": [0.1] * 3,
             "rewards_rejected": [-0.1] * 3, "rewards_margins": [0.2] * 3, "logps_chosen": [-100.0] * 3}
    return with_evals(rows, fixed)


def _moving_eval_steps():
    rows = healthy_steps()
    evals = {"step": [10, 20, 30], "loss": [0.6, 0.55, 0.5], "rewards_chosen": [0.1, 0.2, 0.3],
             "rewards_rejected": [-0.1, -0.3, -0.5], "rewards_margins": [0.2, 0.5, 0.8],
             "logps_chosen": [-99.0, -98.0, -97.0], "logps_rejected": [-111.0, -113.0, -115.0]}
    return with_evals(rows, evals)


def _drifting_reference_steps():
    rows = healthy_steps()
    # logps - rewards/beta moves by 5 nats per evaluation: a reference that is not frozen.
    evals = {"step": [10, 20, 30, 40], "loss": [0.6, 0.55, 0.5, 0.45],
             "rewards_chosen": [0.1, 0.2, 0.3, 0.4], "rewards_rejected": [-0.1, -0.2, -0.3, -0.4],
             "rewards_margins": [0.2, 0.4, 0.6, 0.8],
             "logps_chosen": [-99.0, -103.0, -90.0, -101.0], "logps_rejected": [-111.0, -104.0, -118.0, -107.0]}
    return with_evals(rows, evals)


def _overfit_steps():
    rows = healthy_steps()
    evals = {"step": [5, 10, 15, 20, 25, 30], "loss": [0.6, 0.5, 0.45, 0.55, 0.65, 0.75],
             "rewards_margins": [0.2, 0.4, 0.6, 0.8, 1.0, 1.2]}
    return with_evals(rows, evals)


def _duplicate_pairs():
    frame = make_pairs(steps=10)
    return pl.concat([frame, frame.filter(pl.col("step") == 4)])


def _length_biased_pairs():
    # Margins that increasingly follow the length difference.
    frame = make_pairs(steps=20, pairs=32, noise=1.0)
    k = pl.col("step").cast(pl.Float64)
    diff = pl.col("chosen_length") - pl.col("rejected_length")
    return frame.with_columns(policy_chosen_logps=pl.col("policy_chosen_logps") + 0.002 * k * k * diff).drop("loss")


def _padding_pairs():
    # Summed log-probs that shrink with length: padding of the batch's longest response counted in.
    frame = make_pairs()
    pad = 45 - pl.col("chosen_length")
    pad_rejected = 45 - pl.col("rejected_length")
    return frame.with_columns(reference_chosen_logps=pl.col("reference_chosen_logps") - 3.0 * pad,
                              policy_chosen_logps=pl.col("policy_chosen_logps") - 3.0 * pad,
                              reference_rejected_logps=pl.col("reference_rejected_logps") - 3.0 * pad_rejected,
                              policy_rejected_logps=pl.col("policy_rejected_logps") - 3.0 * pad_rejected).drop("loss")


def _spiky_steps():
    rows = healthy_steps(n=60)
    loss = np.array(rows["loss"], dtype=float)
    loss[40] = 4.0
    rows["loss"] = loss
    return rows


def _rank_local_steps():
    rng = np.random.default_rng(0)
    return healthy_steps(rewards_accuracies=rng.integers(0, 2, 30).astype(float))


def _identity_broken_steps():
    rows = healthy_steps()
    rows["rewards_margins"] = 2 * np.array(rows["rewards_margins"])  # margins logged with beta twice
    return rows


# code -> (builder of runs where the check fires, builder of runs where it must not).
CASES = {
    "reference-tracks-policy": (lambda: [sample("reference-tracks-policy")], lambda: [sample("healthy")]),
    "reference-missing": (
        lambda: [pair_run(make_pairs().drop("reference_chosen_logps", "reference_rejected_logps", "loss"))],
        lambda: [pair_run(make_pairs().drop("reference_chosen_logps", "reference_rejected_logps", "loss"),
                          loss_type="simpo", beta=2.0)]),
    "reference-not-initial-policy": (lambda: [sample("reference-not-initial-policy")], lambda: [sample("healthy")]),
    "reference-not-frozen": (lambda: [step_run(_drifting_reference_steps(), beta=0.1, loss_type="sigmoid")],
                             lambda: [step_run(_moving_eval_steps(), beta=0.1, loss_type="sigmoid")]),
    "preference-direction-inverted": (lambda: [pair_run(_inverted(make_pairs(chosen_drift=-0.3, rejected_drift=0.1)))],
                                      lambda: [pair_run(make_pairs())]),
    "beta-mismatch": (lambda: [sample("beta-mismatch")], lambda: [sample("healthy")]),
    "loss-type-mismatch": (lambda: [sample("ipo-recorded-as-sigmoid")], lambda: [sample("healthy")]),
    "loss-scale-mismatch": (lambda: [sample("loss-scaled-by-accumulation")], lambda: [sample("healthy")]),
    "loss-mismatch": (lambda: [pair_run(make_pairs().with_columns(
        loss=pl.Series(np.random.default_rng(0).uniform(0, 2, 480))))], lambda: [pair_run(make_pairs())]),
    "non-finite-values": (lambda: [sample("nan-step")], lambda: [sample("healthy")]),
    "invalid-logprobs": (lambda: [pair_run(make_pairs().with_columns(policy_chosen_logps=pl.lit(0.0)).drop("loss"))],
                         lambda: [pair_run(make_pairs())]),
    "metric-identity-violated": (lambda: [step_run(_identity_broken_steps(), loss_type="sigmoid")],
                                 lambda: [step_run(healthy_steps(), loss_type="sigmoid")]),
    "no-learning-signal": (lambda: [step_run(healthy_steps(grad_norm=np.zeros(30)))],
                           lambda: [step_run(healthy_steps())]),
    "likelihood-displacement": (lambda: [sample("healthy")], lambda: [sample("reference-not-initial-policy")]),
    "margin-saturation": (lambda: [sample("healthy")], lambda: [pair_run(make_pairs())]),
    "overfitting": (lambda: [step_run(_overfit_steps())], lambda: [step_run(_moving_eval_steps())]),
    "length-exploitation": (lambda: [pair_run(_length_biased_pairs())], lambda: [pair_run(make_pairs(steps=20, pairs=32))]),
    "mask-or-padding-suspect": (lambda: [pair_run(_padding_pairs())], lambda: [pair_run(make_pairs())]),
    "degenerate-pairs": (lambda: [pair_run(make_pairs().with_columns(
        policy_rejected_logps=pl.col("policy_chosen_logps"),
        reference_rejected_logps=pl.col("reference_chosen_logps")).drop("loss"))],
        lambda: [pair_run(make_pairs())]),
    "rank-local-metrics": (lambda: [step_run(_rank_local_steps())], lambda: [step_run(healthy_steps())]),
    "eval-metrics-frozen": (lambda: [step_run(_frozen_eval_steps())], lambda: [step_run(_moving_eval_steps())]),
    "duplicate-steps": (lambda: [pair_run(_duplicate_pairs())], lambda: [pair_run(make_pairs(steps=10))]),
    "instability": (lambda: [step_run(_spiky_steps())], lambda: [step_run(healthy_steps(n=60))]),
    "too-little-data": (lambda: [pair_run(make_pairs(steps=3, pairs=4))], lambda: [pair_run(make_pairs())]),
    "beta-inferred": (lambda: [pair_run(make_pairs(), beta=None)], lambda: [pair_run(make_pairs())]),
    "loss-type-inferred": (lambda: [pair_run(make_pairs(), loss_type=None)], lambda: [pair_run(make_pairs())]),
    "reference-free-objective": (lambda: [sample("simpo-reference-free")], lambda: [sample("healthy")]),
    "normalisation-inferred": (lambda: [pair_run(make_pairs())],
                               lambda: [pair_run(make_pairs(), logps_normalisation="sum")]),
}
