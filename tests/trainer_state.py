"""Turn a pair log into the trainer_state.json that TRL's DPOTrainer would have written.

TRL stores one value per micro-batch and logs the mean over the `logging_steps` optimizer steps
of each window; rewards are beta * log-ratio, accuracies count margin > 0, and transformers 4.x
rounds the loss to 4 decimals. HF numbers steps after the update, so the pairs scored before
update s (pair-log step s) belong to HF step s + 1; an evaluation after s updates is at step s.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl


def _step_means(pairs: pl.DataFrame, beta: float) -> pl.DataFrame:
    rho_w = pl.col("policy_chosen_logps") - pl.col("reference_chosen_logps")
    rho_l = pl.col("policy_rejected_logps") - pl.col("reference_rejected_logps")
    return (pairs.group_by("split", "step").agg(
        pl.col("loss").mean().alias("loss"),
        (beta * rho_w).mean().alias("rewards/chosen"),
        (beta * rho_l).mean().alias("rewards/rejected"),
        (beta * (rho_w - rho_l)).mean().alias("rewards/margins"),
        ((rho_w - rho_l) > 0).cast(pl.Float64).mean().alias("rewards/accuracies"),
        pl.col("policy_chosen_logps").mean().alias("logps/chosen"),
        pl.col("policy_rejected_logps").mean().alias("logps/rejected"),
        pl.col("epoch").max().alias("epoch"),
    ).sort("split", "step"))


def _clean(value: float) -> float | None:
    return value if value is None or math.isfinite(value) else float("nan")


def write_trainer_state(pairs_path: Path, out: Path, beta: float, logging_steps: int = 1) -> Path:
    """Write `out` (trainer_state.json) from the pair log at `pairs_path`."""
    means = _step_means(pl.read_parquet(pairs_path), beta)
    train = means.filter(pl.col("split") == "train").drop("split")
    history = []

    # Window means over logging_steps optimizer steps, logged at the window's last HF step.
    train = train.with_columns(((pl.col("step")) // logging_steps).alias("window"))
    windows = train.group_by("window", maintain_order=True).agg(
        pl.all().exclude("step").mean(), (pl.col("step").max() + 1).alias("hf_step"))
    for row in windows.sort("window").iter_rows(named=True):
        record = {k: _clean(v) for k, v in row.items() if k not in ("window", "hf_step")}
        record["loss"] = round(record["loss"], 4) if math.isfinite(record["loss"]) else record["loss"]
        history.append({**record, "step": row["hf_step"]})

    # Evaluations, with TRL's eval_ prefix.
    for row in means.filter(pl.col("split") == "eval").drop("split").iter_rows(named=True):
        record = {f"eval_{k}": _clean(v) for k, v in row.items() if k not in ("step", "epoch")}
        history.append({**record, "epoch": row["epoch"], "step": row["step"]})
    history.sort(key=lambda r: (r["step"], "eval_loss" in r))
    state = {"global_step": int(train["step"].max()) + 1, "logging_steps": logging_steps,
             "log_history": history}
    out.write_text(json.dumps(state, indent=1))
    return out
