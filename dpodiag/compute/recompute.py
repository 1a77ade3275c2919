"""Per-pair recomputation of a pair log: log-ratios, margins, probabilities, weights, losses."""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import torch

from dpodiag.compute.losses import LOSSES, PairBatch
from dpodiag.compute.rewards import bradley_terry_probability, gradient_weight, log_ratio, reward_margin
from dpodiag.schema import Run

# Rows per chunk on a GPU, so that a log need not fit in device memory (~10 float64 tensors each).
CUDA_CHUNK_ROWS = 8_000_000

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


def recompute(run: Run, device: torch.device) -> pl.DataFrame:
    """Return the run's pair table with DERIVED_COLUMNS added (replacing any given log-ratios)."""
    frame = run.table
    chunk = CUDA_CHUNK_ROWS if device.type == "cuda" else max(frame.height, 1)
    parts: list[dict[str, np.ndarray]] = []
    with torch.no_grad():
        for start in range(0, frame.height, chunk):
            parts.append(recompute_chunk(run, frame.slice(start, chunk), device))
    derived = {name: np.concatenate([part[name] for part in parts]) for name in DERIVED_COLUMNS}
    base = frame.drop([c for c in DERIVED_COLUMNS if c in frame.columns])
    return base.with_columns([pl.Series(name, values) for name, values in derived.items()])
