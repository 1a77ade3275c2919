"""Inputs for report tests: synthetic pair logs with hostile strings, and a step-log run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from synthetic import make_pairs, write_parquet

import dpodiag
from dpodiag.checks import RunData, run_checks
from dpodiag.pipeline import Diagnosis
from dpodiag.schema import Run, RunMeta

SCRIPT_BREAKOUT = "</script><script>window.__pwned=1</script>"
IMG_ONERROR = '<img src=x onerror="window.__pwned=1">'
QUOTES = "it's \"quoted\" & <b>not bold</b>"
NON_ASCII = "Ωμέγα 中文 ✓"
# A column name of the input, mapped onto the canonical `loss` column with --column.
HOSTILE_COLUMN = f"loss {IMG_ONERROR}"


def with_texts(frame: pl.DataFrame, prompt: str, chosen: str, rejected: str) -> pl.DataFrame:
    """Add prompt/chosen/rejected text columns with the same text in every row."""
    return frame.with_columns(prompt=pl.lit(prompt), chosen=pl.lit(chosen), rejected=pl.lit(rejected))


def hostile_logs(folder: Path) -> list[Path]:
    """Write two pair logs whose run names, ids, texts, split names and a column name are hostile."""
    first = make_pairs(steps=20, pairs=16, eval_every=5, seed=1)
    first = first.with_columns(
        run=pl.lit(f"{SCRIPT_BREAKOUT} {NON_ASCII}"),
        example_id=pl.format("{} {}", pl.lit(IMG_ONERROR), pl.col("example_id")))
    first = with_texts(first, SCRIPT_BREAKOUT, IMG_ONERROR, f"{QUOTES} {NON_ASCII}")
    first = first.rename({"loss": HOSTILE_COLUMN})

    # The second run has an unknown split name, which the reader reports in a note.
    second = make_pairs(steps=20, pairs=16, eval_every=5, seed=2)
    second = second.with_columns(
        run=pl.lit(f"{IMG_ONERROR} {QUOTES}"),
        split=pl.when(pl.col("step") == 3).then(pl.lit(SCRIPT_BREAKOUT)).otherwise(pl.col("split")))
    paths = [write_parquet(first, folder / "first.parquet", beta=0.1, loss_type="sigmoid"),
             write_parquet(second, folder / "second.parquet", beta=0.1, loss_type="sigmoid")]
    return paths


def hostile_diagnosis(folder: Path) -> Diagnosis:
    """Load and diagnose the hostile logs, mapping the hostile column name onto `loss`."""
    first, second = hostile_logs(folder)
    runs = dpodiag.load([first], column_map={"loss": HOSTILE_COLUMN}) + dpodiag.load([second])
    return dpodiag.diagnose(runs, device="cpu")


def step_log_run(name: str = "steps-only", steps: int = 12) -> RunData:
    """A step-log run (no pair table): loss, rewards and accuracies per train and eval step."""
    step = np.arange(steps)
    train = pl.DataFrame({
        "run": name, "split": "train", "step": step, "loss": 0.693 - 0.02 * step,
        "rewards_chosen": 0.01 * step, "rewards_rejected": -0.03 * step,
        "rewards_margins": 0.04 * step, "rewards_accuracies": np.minimum(0.5 + 0.04 * step, 1.0),
        "logps_chosen": -120.0 - step, "logps_rejected": -130.0 - 3.0 * step,
        "grad_norm": np.full(steps, 1.5), "learning_rate": np.full(steps, 5e-7)})
    evaluation = train.filter(pl.col("step") % 4 == 0).with_columns(split=pl.lit("eval"))
    table = pl.concat([train, evaluation])
    meta = RunMeta()
    meta.update({"beta": 0.1, "loss_type": "sigmoid"}, "trainer-config")
    run = Run(name=name, source="memory/trainer_state.json", level="steps", table=table, meta=meta,
              format="trainer_state.json", dialect="trl", notes=["2 records without a step were dropped"])
    return RunData(run=run, steps=table)


def diagnose_data(runs: list[RunData]) -> Diagnosis:
    """A Diagnosis of already analysed runs, with every check run on each."""
    return Diagnosis(runs=runs, findings=[f for data in runs for f in run_checks(data)])
