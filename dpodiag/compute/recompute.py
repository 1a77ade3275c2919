"""Per-pair recomputation of a pair log: log-ratios, margins, probabilities, weights, losses."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import polars as pl
import torch

from dpodiag.compute.losses import LOSSES, PairBatch
from dpodiag.compute.rewards import bradley_terry_probability, gradient_weight, log_ratio, reward_margin
from dpodiag.schema import SOURCE_ROW, Run

# Rows per chunk on a GPU, so that a log need not fit in device memory (~10 float64 tensors each).
CUDA_CHUNK_ROWS = 8_000_000
# Rows per chunk on the CPU and per streamed batch: the input tensors and results of one chunk
# (about 20 float64 columns, 160 MB) are the only per-row memory the recompute adds.
CPU_CHUNK_ROWS = 1_000_000

DERIVED_COLUMNS = ["chosen_logratio", "rejected_logratio", "margin", "probability",
                   "grad_weight", "loss_recomputed", "beta_used"]


def _tensor(frame: pl.DataFrame, name: str, device: torch.device) -> torch.Tensor | None:
    if name not in frame.columns:
        return None
    values = frame.get_column(name).to_numpy(allow_copy=True).astype(np.float64, copy=False)
    # Polars hands out read-only views without a copy; nothing here writes to them in place.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(values).to(device)


def pair_batch(frame: pl.DataFrame, device: torch.device, per_token: bool) -> PairBatch:
    """Build a PairBatch from canonical pair columns; log-ratios come from log-probs when absent."""
    c = _tensor(frame, "policy_chosen_logps", device)
    r = _tensor(frame, "policy_rejected_logps", device)
    c0 = _tensor(frame, "reference_chosen_logps", device)
    r0 = _tensor(frame, "reference_rejected_logps", device)
    chosen_ratio = _tensor(frame, "chosen_logratio", device)
    rejected_ratio = _tensor(frame, "rejected_logratio", device)
    if chosen_ratio is None and c is not None:
        # Without reference log-probs the reference term is 0 (reference-free losses).
        chosen_ratio = log_ratio(c, c0) if c0 is not None else c
        rejected_ratio = log_ratio(r, r0) if r0 is not None else r
    return PairBatch(chosen_logratio=chosen_ratio, rejected_logratio=rejected_ratio,
                     policy_chosen_logps=c, policy_rejected_logps=r,
                     chosen_length=_tensor(frame, "chosen_length", device),
                     rejected_length=_tensor(frame, "rejected_length", device),
                     per_token=per_token)


def log_ratio_expressions(columns: list[str]) -> tuple[pl.Expr, pl.Expr] | None:
    """Build the chosen and rejected log-ratios as polars expressions, by the rule of `pair_batch`:
    the given log-ratio columns, else policy minus reference log-probs, else the policy log-probs
    alone; None when the columns give neither. Float64 subtraction rounds as torch's does."""
    if {"chosen_logratio", "rejected_logratio"} <= set(columns):
        return pl.col("chosen_logratio"), pl.col("rejected_logratio")
    if not {"policy_chosen_logps", "policy_rejected_logps"} <= set(columns):
        return None
    chosen, rejected = pl.col("policy_chosen_logps"), pl.col("policy_rejected_logps")
    if "reference_chosen_logps" in columns:
        chosen = chosen - pl.col("reference_chosen_logps")
    if "reference_rejected_logps" in columns:
        rejected = rejected - pl.col("reference_rejected_logps")
    return chosen, rejected


def _beta_column(run: Run, frame: pl.DataFrame) -> np.ndarray:
    """Per-row beta: the row's own value, else the run's, else NaN when unknown."""
    default = run.meta.beta if run.meta.beta is not None else np.nan
    if "beta" in frame.columns:
        return frame.get_column("beta").fill_null(default).to_numpy().astype(np.float64)
    return np.full(frame.height, default, dtype=np.float64)


def recompute_chunk(run: Run, frame: pl.DataFrame, device: torch.device) -> dict[str, np.ndarray]:
    """Recompute the derived columns for one chunk of rows on `device`."""
    batch = pair_batch(frame, device, per_token=run.meta.logps_normalisation == "mean")
    beta_np = _beta_column(run, frame)
    beta = torch.from_numpy(beta_np).to(device)

    # Rewards, probabilities and weights follow the sigmoid (Bradley–Terry) reading of the margin.
    spec = LOSSES.get(run.meta.loss_type or "")
    if spec is not None and spec.per_token_margin:
        margin = reward_margin(batch.average(batch.chosen_logratio, batch.chosen_length),
                               batch.average(batch.rejected_logratio, batch.rejected_length), beta)
    else:
        margin = reward_margin(batch.chosen_logratio, batch.rejected_logratio, beta)
    result = {
        "chosen_logratio": batch.chosen_logratio,
        "rejected_logratio": batch.rejected_logratio,
        "margin": margin,
        "probability": bradley_terry_probability(margin),
        "grad_weight": gradient_weight(margin),
    }

    # The declared loss, when both loss type and beta are known.
    if spec is not None:
        result["loss_recomputed"] = spec.fn(batch, beta, label_smoothing=run.meta.label_smoothing,
                                            simpo_gamma=run.meta.simpo_gamma)
    else:
        result["loss_recomputed"] = torch.full_like(margin, float("nan"))
    columns = {name: tensor.detach().cpu().numpy() for name, tensor in result.items()}
    columns["beta_used"] = beta_np
    return columns


def chunk_rows(device: torch.device) -> int:
    """Rows recomputed per chunk on `device`."""
    return CUDA_CHUNK_ROWS if device.type == "cuda" else CPU_CHUNK_ROWS


def with_derived(run: Run, frame: pl.DataFrame, device: torch.device) -> pl.DataFrame:
    """Return `frame` with DERIVED_COLUMNS added (replacing any given log-ratios), computed in
    chunks of `chunk_rows(device)` rows. Each derived column keeps the chunks as its own
    buffers, so no result is copied into one block."""
    chunks: dict[str, list[pl.Series]] = {name: [] for name in DERIVED_COLUMNS}
    with torch.no_grad():
        for part in frame.iter_slices(chunk_rows(device)):
            for name, values in recompute_chunk(run, part, device).items():
                chunks[name].append(pl.Series(name, values))
    base = frame.drop([c for c in DERIVED_COLUMNS if c in frame.columns])
    if frame.height == 0:
        return base.with_columns(pl.Series(name, [], dtype=pl.Float64) for name in DERIVED_COLUMNS)
    columns = [pl.concat(parts, rechunk=False) for parts in chunks.values()]
    if "beta" not in frame.columns:
        # One beta for the whole run: a constant column, which polars stores as one value.
        default = run.meta.beta if run.meta.beta is not None else float("nan")
        columns[DERIVED_COLUMNS.index("beta_used")] = pl.lit(default, dtype=pl.Float64).alias("beta_used")
    return base.with_columns(columns)


def recompute(run: Run, device: torch.device) -> pl.DataFrame:
    """Return the run's in-memory pair table with DERIVED_COLUMNS added (replacing any given
    log-ratios)."""
    return with_derived(run, run.table, device)


def recompute_to_files(run: Run, device: torch.device, folder: Path) -> pl.LazyFrame:
    """Recompute a streamed run window by window into parquet files in `folder`, and return a
    LazyFrame that scans them: the pair table with DERIVED_COLUMNS, never held in memory whole.

    A run read from a parquet or Arrow file carries SOURCE_ROW, and each window is
    CPU_CHUNK_ROWS rows of the source file, which a filter on SOURCE_ROW reads alone. So the
    files keep the log's row order, and memory keeps one window at a time. Other LazyFrames are read in polars' streaming
    batches, which may buffer the whole run.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for index, window in enumerate(_windows(run.table)):
        if window.height == 0:
            continue
        part = with_derived(run, window.drop(SOURCE_ROW, strict=False), device)
        part.write_parquet(folder / f"part-{index:06d}.parquet", compression="lz4", statistics=True)
        written += 1
    if written == 0:
        empty = run.table.head(0).collect().drop(SOURCE_ROW, strict=False)
        return with_derived(run, empty, device).lazy()
    return pl.scan_parquet(folder / "part-*.parquet")


def _windows(table: pl.LazyFrame):
    """Yield the rows of `table` in order, CPU_CHUNK_ROWS source rows (or one batch) at a time."""
    if SOURCE_ROW not in table.collect_schema().names():
        yield from table.collect_batches(chunk_size=CPU_CHUNK_ROWS, engine="streaming")
        return
    bounds = table.select(pl.col(SOURCE_ROW).min().alias("first"), pl.col(SOURCE_ROW).max().alias("last"))
    first, last = bounds.collect(engine="streaming").row(0)
    if first is None:
        return
    for start in range(first, last + 1, CPU_CHUNK_ROWS):
        rows = pl.col(SOURCE_ROW).is_between(start, start + CPU_CHUNK_ROWS - 1)
        yield table.filter(rows).collect(engine="streaming")
