"""Inference of run metadata that no source declares: beta and the loss type.

A pair log with a logged loss identifies both (see `identify`); a step log with eval rewards
and eval log-probs identifies beta through the eval identity. What cannot be inferred falls back
to TRL's defaults (sigmoid loss, beta 0.1), recorded with source "default".
"""

from __future__ import annotations

import math

import polars as pl
import torch

from dpodiag.compute.identify import identify, strided_sample
from dpodiag.compute.quantiles import median
from dpodiag.compute.recompute import log_ratio_expressions, recompute
from dpodiag.schema import Run

DEFAULT_BETA = 0.1
DEFAULT_LOSS_TYPE = "sigmoid"
# A fit explains the logged loss when its RMSE is within 1% of the loss's RMS (or 1e-4).
EXPLAINED_RELATIVE_RMSE = 0.01


def _explained(rmse: float, logged_rms: float) -> bool:
    return rmse <= max(EXPLAINED_RELATIVE_RMSE * logged_rms, 1e-4)


# Summed log-probs grow with the response length, so |logp| / length varies much less than
# |logp|; per-token averages are the other way round and stay within a few nats (a model that
# puts 1% on each token scores -4.6 per token). Between the two ratios nothing is inferred.
SUM_RATIO = 0.7
MEAN_RATIO = 1.4
MEAN_MAX_NATS = 5.0
# The normalisation statistics of an in-memory table longer than this come from every k-th row.
# On the 10M-row benchmark log the sample moves the ratio from 0.2005 to 0.2006 and the median
# from 160.80 to 160.83 nats, far from the thresholds above.
NORMALISATION_ROWS = 1_000_000


def _variation(mean: float | None, std: float | None) -> float:
    """Coefficient of variation, std / mean."""
    return float(std / mean) if mean else float("nan")


def infer_normalisation(run: Run) -> None:
    """Tell summed from per-token-averaged log-probs by how their spread follows the length, on
    an even sample of at most NORMALISATION_ROWS rows of an in-memory table."""
    meta, columns = run.meta, run.table.collect_schema().names()
    # The reference does not move during training, so its log-probs show the length effect best.
    column = next((c for c in ("reference_chosen_logps", "policy_chosen_logps") if c in columns), None)
    if meta.logps_normalisation is not None or column is None or "chosen_length" not in columns:
        return

    table = run.table
    if isinstance(table, pl.DataFrame) and table.height > NORMALISATION_ROWS:
        table = table.gather_every(math.ceil(table.height / NORMALISATION_ROWS))
    finite = table.lazy().filter(pl.col(column).is_finite() & (pl.col("chosen_length") > 0)
                                     & (pl.col(column) != 0))
    size = pl.col(column).abs()
    per_token = size / pl.col("chosen_length")
    engine = "streaming" if run.streaming else "auto"
    statistics = [pl.len().alias("rows"), pl.col("chosen_length").n_unique().alias("lengths"),
                  size.mean().alias("size_mean"), size.std().alias("size_std"),
                  per_token.mean().alias("per_token_mean"), per_token.std().alias("per_token_std")]
    if not run.streaming:
        # In memory, the median is one more aggregation of the same pass.
        statistics.append(size.median().alias("size_median"))
    stats = finite.select(statistics).collect(engine=engine).row(0, named=True)
    if stats["rows"] < 8 or stats["lengths"] < 3:
        return
    ratio = (_variation(stats["per_token_mean"], stats["per_token_std"])
             / _variation(stats["size_mean"], stats["size_std"]))
    magnitude = float(stats["size_median"] if "size_median" in stats else median(finite, size, engine))

    evidence = {"method": f"spread of |{column}| / length against the spread of |{column}|",
                "variation_ratio": ratio, "median_abs_logps": magnitude}
    if ratio <= SUM_RATIO:
        value = "sum"
    elif ratio >= MEAN_RATIO and magnitude < MEAN_MAX_NATS:
        value = "mean"
    else:
        # The checks read undeclared log-probs as sums, and the info finding reports the guess.
        meta.inference["logps_normalisation"] = {**evidence, "undecided": True}
        return
    meta.update({"logps_normalisation": value}, "inferred")
    meta.inference["logps_normalisation"] = evidence


def infer_pair_meta(run: Run) -> None:
    """Fill beta and loss type of a pair log from its logged loss, else from defaults, in place."""
    infer_normalisation(run)
    meta = run.meta
    if meta.beta is not None and meta.loss_type is not None:
        return
    if "loss" in run.table.collect_schema().names():
        fit = identify(provisional_fit_rows(run), None, None, meta.label_smoothing, meta.simpo_gamma,
                       per_token=meta.logps_normalisation == "mean")
        candidates = dict(fit.variants) if fit is not None else {}
        if meta.loss_type is not None:
            candidates = {k: v for k, v in candidates.items() if k == meta.loss_type}
        best = min(candidates.values(), key=lambda f: f.rmse, default=None)
        if best is not None and _explained(best.rmse, fit.logged_rms):
            runner_up = min((f.rmse for f in candidates.values() if f.loss_type != best.loss_type),
                            default=None)
            evidence = {"rmse": best.rmse, "logged_rms": fit.logged_rms, "runner_up_rmse": runner_up,
                        "split": run.splits[0]}
            if meta.beta is None:
                meta.update({"beta": best.beta}, "inferred")
                meta.inference["beta"] = {**evidence, "method": f"fit of the logged loss as {best.loss_type}"}
            if meta.loss_type is None:
                meta.update({"loss_type": best.loss_type}, "inferred")
                meta.inference["loss_type"] = {**evidence, "method": "best of every loss variant"}
    apply_defaults(run)


def provisional_fit_rows(run: Run) -> pl.DataFrame:
    """Select the rows of the run's first split that `identify` fits, and recompute them with beta 1.

    Log-ratios do not depend on beta or the loss, so a provisional recompute gives them. The
    rows are chosen before the recompute, by the rule of `identify.fit_rows` on the same
    log-ratios, so only they are recomputed.
    """
    ratios = log_ratio_expressions(run.table.collect_schema().names())
    rows = run.table.lazy().filter(pl.col("split") == run.splits[0])
    if ratios is not None:
        chosen, rejected = ratios
        rows = rows.filter(pl.col("loss").is_finite() & chosen.is_finite() & rejected.is_finite())
    rows = strided_sample(rows, "streaming" if run.streaming else "auto")
    provisional = Run(run.name, run.source, run.level, rows, type(run.meta)(beta=1.0, loss_type=None),
                      run.format)
    return recompute(provisional, torch.device("cpu"))


def apply_defaults(run: Run) -> None:
    """Fall back to TRL's defaults for a reference-based pair log with no declared beta or loss."""
    meta = run.meta
    if meta.loss_type is None:
        meta.update({"loss_type": DEFAULT_LOSS_TYPE}, "default")
        meta.inference["loss_type"] = {"method": "not declared and not identifiable; TRL's default"}
    if meta.beta is None:
        meta.update({"beta": DEFAULT_BETA}, "default")
        meta.inference["beta"] = {"method": "not declared and not identifiable; TRL's default"}


# Largest standard error of an inferred beta, relative to beta.
MAX_BETA_RELATIVE_ERROR = 0.02


def _beta_from_reference_free_rewards(run: Run) -> None:
    """Fill beta of a reference-free step log (CPO, SimPO, ORPO in TRL), whose rewards are beta
    times the policy log-probs, from their ratio when it is one value in every record."""
    from dpodiag.dialects import fixed_reward_ratio

    sides = [("rewards_chosen", "logps_chosen"), ("rewards_rejected", "logps_rejected")]
    beta = fixed_reward_ratio(run.table, sides)
    if beta is None:
        return
    run.meta.update({"beta": round(beta, 6)}, "inferred")
    run.meta.inference["beta"] = {"method": "rewards / policy log-probs, one value in every record"}


def infer_step_meta(run: Run) -> None:
    """Fill beta of a step log in place, when no source declares it: from the eval identity,
    or from the rewards of a reference-free log."""
    from dpodiag.compute.identify import fit_eval_identity
    from dpodiag.dialects import DIALECTS

    dialect = DIALECTS.get(run.dialect or "")
    if run.meta.beta is not None or dialect is None:
        return
    if not dialect.rewards_beta_scaled or not dialect.preference:
        return
    if dialect.reference_free:
        _beta_from_reference_free_rewards(run)
        return
    columns = ["logps_chosen", "rewards_chosen", "logps_rejected", "rewards_rejected"]
    if not set(columns) <= set(run.table.columns):
        return
    rows = run.table.filter(pl.col("split") == "eval").sort("step")
    for column in columns:
        rows = rows.filter(pl.col(column).is_finite())
    if rows.height < 3:
        return
    fit = fit_eval_identity(*(rows.get_column(c).to_numpy() for c in columns))
    if fit is None or fit.drift > max(1e-3, 0.01 * fit.scale):
        return
    # Log-probs printed to 4 significant digits that move little between evaluations give a
    # slope that is off by several percent. Such a beta is not reported as identified.
    if fit.beta_stderr > MAX_BETA_RELATIVE_ERROR * fit.beta:
        return
    run.meta.update({"beta": round(fit.beta, 6)}, "inferred")
    run.meta.inference["beta"] = {"method": "slope of eval rewards against eval log-probs",
                                  "evaluations": rows.height, "drift": fit.drift,
                                  "standard_error": fit.beta_stderr}
