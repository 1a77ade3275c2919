"""KTO on unpaired logs: one row per completion with a desirable flag.

Notation: rho = log pi_theta(y|x) - log pi_ref(y|x) for one completion, z0 the batch KL estimate
the trainer used (clamped at 0), beta the inverse temperature.
"""

from __future__ import annotations

import torch


def kto_loss(logratio: torch.Tensor, desirable: torch.Tensor, beta: float | torch.Tensor,
             z0: torch.Tensor | float = 0.0, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> torch.Tensor:
    r"""Per-completion KTO loss, shape ``[N]``.

    .. math::
        \ell = \lambda_D (1 - \sigma(\beta(\rho - z_0))) \text{ if desirable, else }
               \lambda_U (1 - \sigma(\beta(z_0 - \rho)))

    At rho = z0 = 0 every completion costs 0.5 (unit weights).
    """
    z = beta * (logratio - z0)
    desirable_loss = desirable_weight * (1 - torch.sigmoid(z))
    undesirable_loss = undesirable_weight * (1 - torch.sigmoid(-z))
    return torch.where(desirable, desirable_loss, undesirable_loss)


KTO_ZERO_MARGIN = 0.5


def unpaired_step_aggregates(table, beta: float, device: torch.device):
    """Per (run, split, step) aggregates of an unpaired log, in the step-table column names.

    rewards_chosen / rewards_rejected are beta * mean log-ratio of the desirable / undesirable
    completions (TRL's KTO logs the same), rewards_margins their difference; `loss` is the mean
    logged loss and `loss_recomputed` the mean KTO loss with the logged z0 (0 where absent).
    Means are plain, so a NaN in a step shows as NaN there.
    """
    import numpy as np
    import polars as pl

    rho = torch.from_numpy((table.get_column("policy_logps") - table.get_column("reference_logps"))
                           .to_numpy().astype(np.float64)).to(device)
    desirable = torch.from_numpy(table.get_column("desirable").fill_null(False).to_numpy()).to(device)
    z0 = (torch.from_numpy(table.get_column("z0").fill_null(0.0).to_numpy().astype(np.float64)).to(device)
          if "z0" in table.columns else 0.0)
    with torch.no_grad():
        recomputed = kto_loss(rho, desirable, beta, z0).cpu().numpy()
    frame = table.with_columns(pl.Series("logratio", rho.cpu().numpy()),
                               pl.Series("loss_recomputed", recomputed))
    reward = beta * pl.col("logratio")
    exprs = [pl.len().alias("pairs"),
             reward.filter(pl.col("desirable")).mean().alias("rewards_chosen"),
             reward.filter(~pl.col("desirable")).mean().alias("rewards_rejected"),
             pl.col("policy_logps").filter(pl.col("desirable")).mean().alias("logps_chosen"),
             pl.col("policy_logps").filter(~pl.col("desirable")).mean().alias("logps_rejected"),
             pl.col("loss_recomputed").mean()]
    if "loss" in table.columns:
        exprs.append(pl.col("loss").mean())
    if "z0" in table.columns:
        exprs.append(pl.col("z0").mean().alias("kl"))
    steps = frame.group_by(["run", "split", "step"]).agg(exprs).sort(["run", "split", "step"])
    return steps.with_columns((pl.col("rewards_chosen") - pl.col("rewards_rejected")).alias("rewards_margins"))
