"""Identification of beta, a constant loss scale and the loss variant from logged losses.

Given the loss a trainer logged per pair (or per batch) and the log-ratios of the same pairs,
each candidate configuration predicts the logged values; the root-mean-square error (RMSE) of
that prediction measures how well the configuration explains the log.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch

from dpodiag.compute.losses import LOSSES, LossSpec
from dpodiag.compute.recompute import pair_batch

# Rows used for fitting; an evenly strided subsample keeps the fit fast on very large logs.
MAX_FIT_ROWS = 50_000
BETA_GRID = np.logspace(-3, 2, 61)
# Refinement of the best grid point: rounds of evenly spaced log-beta grids (see `_fit_beta`).
REFINE_ROUNDS = 13
REFINE_POINTS = 9
# Grid points evaluated in one tensor operation, at most GRID_ELEMENTS values at a time.
GRID_ELEMENTS = 1 << 21
# RMSE difference, relative to the logged RMS, below which two variant fits tie: float rounding
# of one loss computed two ways.
VARIANT_TIE = 1e-6
# Values of a variant's option (LossSpec.option) tried at every beta of BETA_GRID before the best
# one is refined: the label smoothing of cDPO and robust DPO, which must stay below 0.5, and
# SimPO's target margin gamma.
OPTION_GRIDS = {"label_smoothing": (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45),
                "simpo_gamma": (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)}
OPTION_BOUNDS = {"label_smoothing": (0.0, 0.499), "simpo_gamma": (0.0, 20.0)}
# Columns a fit reads; other columns of the pair table are not collected.
FIT_COLUMNS = ["split", "step", "loss", "chosen_logratio", "rejected_logratio", "policy_chosen_logps",
               "policy_rejected_logps", "chosen_length", "rejected_length"]


@dataclass
class LossFit:
    """Fit quality of one configuration against the logged losses."""

    loss_type: str
    beta: float
    scale: float
    rmse: float
    options: dict[str, float] = field(default_factory=dict)
    """The value of the variant's option (LossSpec.option) that the fit found, if it has one."""


@dataclass
class Identification:
    """Fits of the logged losses: the declared configuration and the alternatives.

    The beta fit and the variant fits are computed on first access, because they cost one grid
    search each and the checks read them only when the declared configuration fails.
    """

    logged_rms: float
    """RMS of the logged losses themselves, the scale against which errors are judged."""
    batch_level: bool
    """True when the logged loss is one value per step (a batch mean), not one per pair."""
    declared: LossFit | None = None
    scale_fit: LossFit | None = None
    sign_flipped: LossFit | None = None
    """The declared loss with the sign of the margin flipped (a sign error in the trainer)."""
    predictor: _Predictor | None = field(default=None, repr=False)
    fit_variants: bool = True
    """Whether `variants` fits every registered loss variant; it is empty otherwise."""

    @functools.cached_property
    def beta_fit(self) -> LossFit | None:
        """The declared loss type at its best beta; None without a declared configuration."""
        if self.declared is None:
            return None
        return _fit_beta(self.predictor, LOSSES[self.declared.loss_type])

    @functools.cached_property
    def variants(self) -> dict[str, LossFit]:
        """Every registered loss variant at its own best beta (reference-free ones only when the
        log has policy log-probs)."""
        if not self.fit_variants:
            return {}
        has_policy = self.predictor.batch.policy_chosen_logps is not None
        return {spec.name: _fit_variant(self.predictor, spec) for spec in LOSSES.values()
                if spec.needs_reference or has_policy}

    def best_variant(self) -> LossFit | None:
        """The variant with the least RMSE. Variants that tie with it (within VARIANT_TIE of
        the logged RMS) go by registry order, so sigmoid wins over cdpo and robust at a label
        smoothing of 0, which compute the same loss."""
        fits = list(self.variants.values())
        if not fits:
            return None
        least = min(fit.rmse for fit in fits)
        return next(fit for fit in fits if fit.rmse <= least + VARIANT_TIE * self.logged_rms)


def fit_rows(pairs: pl.DataFrame | pl.LazyFrame, engine: str = "auto") -> pl.DataFrame:
    """Rows with a finite logged loss and finite log-ratios, at most MAX_FIT_ROWS of them.

    Above MAX_FIT_ROWS usable rows, every k-th usable row in table order is kept, with
    k = ceil(usable / MAX_FIT_ROWS): a deterministic subsample that spreads over all steps and
    that a streaming scan selects the same way.
    """
    columns = [c for c in FIT_COLUMNS if c in pairs.collect_schema().names()]
    usable = pairs.lazy().select(columns).filter(
        pl.col("loss").is_finite() & pl.col("chosen_logratio").is_finite()
        & pl.col("rejected_logratio").is_finite())
    return strided_sample(usable, engine)


def strided_sample(rows: pl.LazyFrame, engine: str = "auto") -> pl.DataFrame:
    """Collect `rows`, or every k-th of them with k = ceil(count / MAX_FIT_ROWS) when there are
    more than MAX_FIT_ROWS."""
    count = rows.select(pl.len()).collect(engine=engine).item()
    if count > MAX_FIT_ROWS:
        rows = rows.gather_every(math.ceil(count / MAX_FIT_ROWS))
    return rows.collect(engine=engine)


def is_batch_level(rows: pl.DataFrame) -> bool:
    """True when every step logs a single loss value shared by all its pairs."""
    per_step = rows.group_by(["split", "step"]).agg(pl.col("loss").n_unique().alias("n"),
                                                    pl.len().alias("pairs"))
    return bool((per_step.get_column("n") == 1).all() and (per_step.get_column("pairs") > 1).any())


class _Predictor:
    """Evaluates a loss variant on fixed rows, reduced per step when the log is batch-level."""

    def __init__(self, rows: pl.DataFrame, per_token: bool, label_smoothing: float,
                 simpo_gamma: float | None, batch_level: bool):
        self.batch = pair_batch(rows, torch.device("cpu"), per_token)
        self.options = {"label_smoothing": label_smoothing, "simpo_gamma": simpo_gamma}
        self.batch_level = batch_level
        groups = rows.select(pl.struct("split", "step").rank("dense").alias("g")).get_column("g")
        self.groups = torch.from_numpy(groups.to_numpy().astype(np.int64) - 1)
        self.n_groups = int(self.groups.max()) + 1 if len(groups) else 0
        self.counts = torch.bincount(self.groups, minlength=self.n_groups).to(torch.float64)
        logged = torch.from_numpy(rows.get_column("loss").to_numpy().astype(np.float64))
        self.logged = self._reduce(logged)

    def _reduce(self, values: torch.Tensor) -> torch.Tensor:
        """Per-step means along the last axis when the log is batch-level, else `values`."""
        if not self.batch_level:
            return values
        sums = torch.zeros((*values.shape[:-1], self.n_groups), dtype=torch.float64)
        return sums.index_add_(-1, self.groups, values) / self.counts

    def predict(self, spec: LossSpec, beta: float | torch.Tensor, options: dict | None = None) -> torch.Tensor:
        """Return the loss of every row (or step) at `beta`; a [G, 1] tensor of betas gives [G, rows].
        `options` override the declared label smoothing and SimPO gamma."""
        with torch.no_grad():
            return self._reduce(spec.fn(self.batch, beta, **{**self.options, **(options or {})})
                                .to(torch.float64))

    def rmse(self, predicted: torch.Tensor, scale: float = 1.0) -> float:
        error = scale * predicted - self.logged
        value = float(torch.sqrt(torch.mean(error * error)))
        return value if math.isfinite(value) else math.inf

    def grid_rmse(self, spec: LossSpec, betas: np.ndarray, options: dict | None = None) -> np.ndarray:
        """RMSE at each beta of `betas`, evaluated a block of betas per tensor operation."""
        block = max(1, GRID_ELEMENTS // max(len(self.logged), 1))
        errors = []
        for start in range(0, len(betas), block):
            beta = torch.from_numpy(np.ascontiguousarray(betas[start:start + block])).unsqueeze(1)
            error = self.predict(spec, beta, options) - self.logged
            errors.append(torch.sqrt(torch.mean(error * error, dim=-1)).numpy())
        values = np.concatenate(errors)
        return np.where(np.isfinite(values), values, math.inf)


def _fit_variant(predictor: _Predictor, spec: LossSpec) -> LossFit:
    """Fit beta, and the variant's option when it has one (see `_fit_option`)."""
    if spec.option is None:
        return _fit_beta(predictor, spec)
    return _fit_option(predictor, spec)


def _fit_option(predictor: _Predictor, spec: LossSpec) -> LossFit:
    """Fit beta and the option of `spec` together.

    Every value of OPTION_GRIDS (and the declared one) is tried on the coarse beta grid, and
    beta is refined at the best value. The option is then refined at that beta between its grid
    neighbours (REFINE_ROUNDS rounds of REFINE_POINTS values), and beta once more.
    """
    name = spec.option
    declared = predictor.options.get(name)
    values = sorted({*OPTION_GRIDS[name], *([declared] if declared is not None else [])})
    coarse = [float(np.min(predictor.grid_rmse(spec, BETA_GRID, {name: value}))) for value in values]
    best = int(np.argmin(coarse))
    value = values[best]
    fit = _fit_beta(predictor, spec, {name: value})
    low, high = values[max(best - 1, 0)], values[min(best + 1, len(values) - 1)]
    bound_low, bound_high = OPTION_BOUNDS[name]
    for _ in range(REFINE_ROUNDS):
        grid = np.clip(np.linspace(low, high, REFINE_POINTS), bound_low, bound_high)
        errors = [predictor.rmse(predictor.predict(spec, fit.beta, {name: float(v)})) for v in grid]
        index = int(np.argmin(errors))
        if errors[index] < fit.rmse:
            value = float(grid[index])
            fit = LossFit(spec.name, fit.beta, 1.0, errors[index])
        low, high = grid[max(index - 1, 0)], grid[min(index + 1, REFINE_POINTS - 1)]
    fit = _fit_beta(predictor, spec, {name: value})
    fit.options = {name: value}
    return fit


def _fit_beta(predictor: _Predictor, spec: LossSpec, options: dict | None = None) -> LossFit:
    """Grid search over log-spaced beta, then REFINE_ROUNDS finer grids around the best point.

    Each refinement evaluates REFINE_POINTS betas evenly spaced in log beta between the best
    point's neighbours and keeps the best. The bracket shrinks (REFINE_POINTS - 1) / 2 times per
    round, from 0.38 to about 6e-9 in log beta (a relative beta error near 1e-8). `options`
    override the declared label smoothing and SimPO gamma.
    """
    errors = predictor.grid_rmse(spec, BETA_GRID, options)
    best = int(np.argmin(errors))
    best_beta, best_error = float(BETA_GRID[best]), float(errors[best])
    log_betas = np.log(BETA_GRID)
    low, high = log_betas[max(best - 1, 0)], log_betas[min(best + 1, len(log_betas) - 1)]
    for _ in range(REFINE_ROUNDS):
        grid = np.linspace(low, high, REFINE_POINTS)
        errors = predictor.grid_rmse(spec, np.exp(grid), options)
        best = int(np.argmin(errors))
        if errors[best] < best_error:
            best_beta, best_error = float(np.exp(grid[best])), float(errors[best])
        low, high = grid[max(best - 1, 0)], grid[min(best + 1, REFINE_POINTS - 1)]
    return LossFit(spec.name, best_beta, 1.0, best_error)


def identify(pairs: pl.DataFrame | pl.LazyFrame, loss_type: str | None, beta: float | None,
             label_smoothing: float = 0.0, simpo_gamma: float | None = None,
             per_token: bool = False, variants: bool = True,
             engine: str = "auto") -> Identification | None:
    """Fit the logged loss of a recomputed pair table; None when there is nothing to fit.

    With a declared loss type and beta: the declared fit, the best constant scale k
    (logged = k * recomputed, least squares), the declared loss with the margin's sign flipped,
    and on access the best beta for that loss type. With `variants`, the best beta for every
    registered loss variant as well, on access. `engine` is the polars engine that collects
    the fit rows ("streaming" for a scan of a log larger than memory).
    """
    if "loss" not in pairs.collect_schema().names():
        return None
    rows = fit_rows(pairs, engine)
    if rows.height < 8:
        return None
    batch_level = is_batch_level(rows)
    predictor = _Predictor(rows, per_token, label_smoothing, simpo_gamma, batch_level)
    logged_rms = float(torch.sqrt(torch.mean(predictor.logged ** 2)))
    result = Identification(logged_rms=logged_rms, batch_level=batch_level, predictor=predictor,
                            fit_variants=variants)

    # The declared configuration, its best scale and its flipped sign.
    spec = LOSSES.get(loss_type or "")
    if spec is not None and beta is not None:
        predicted = predictor.predict(spec, beta)
        result.declared = LossFit(spec.name, beta, 1.0, predictor.rmse(predicted))
        denominator = float(torch.sum(predicted * predicted))
        if denominator > 0 and math.isfinite(denominator):
            scale = float(torch.sum(predicted * predictor.logged)) / denominator
            result.scale_fit = LossFit(spec.name, beta, scale, predictor.rmse(predicted, scale))
        flipped = predictor.predict(spec, -beta)
        result.sign_flipped = LossFit(spec.name, -beta, 1.0, predictor.rmse(flipped))
    return result


@dataclass
class EvalIdentityFit:
    """Least-squares fit of rewards = beta * (logps - reference) over evaluations of a fixed set."""

    beta: float
    reference_chosen: float
    reference_rejected: float
    drift: float
    """Largest deviation of the implied reference log-prob, logps - rewards/beta, from its fit (nats)."""
    scale: float
    """Mean |reference log-prob|, the size against which the drift is judged."""
    beta_stderr: float = 0.0
    """Standard error of beta from the fit's residuals (0 with no residual degrees of freedom).
    It is large when the eval log-probs barely move against their printed precision."""


def fit_eval_identity(logps_chosen: np.ndarray, rewards_chosen: np.ndarray,
                      logps_rejected: np.ndarray, rewards_rejected: np.ndarray) -> EvalIdentityFit | None:
    r"""Fit :math:`\bar r_s = \beta \bar c_s - \beta \bar c_{0,s}` jointly for s in {chosen, rejected}.

    On a fixed eval set the mean reference log-prob :math:`\bar c_0` is constant, so the mean
    rewards are linear in the mean log-probs with slope beta. Returns None when the slope is not
    positive (the log-probs do not move, or the rewards are not beta * log-ratio).
    """
    n = len(logps_chosen)
    design = np.zeros((2 * n, 3))
    design[:n, 0], design[n:, 0] = logps_chosen, logps_rejected
    design[:n, 1], design[n:, 2] = 1.0, 1.0
    target = np.concatenate([rewards_chosen, rewards_rejected])
    (beta, offset_chosen, offset_rejected), *_ = np.linalg.lstsq(design, target, rcond=None)
    if not beta > 0:
        return None
    implied_chosen = logps_chosen - rewards_chosen / beta
    implied_rejected = logps_rejected - rewards_rejected / beta
    drift = float(max(np.ptp(implied_chosen), np.ptp(implied_rejected)))
    scale = float(np.mean(np.abs(np.concatenate([implied_chosen, implied_rejected]))))
    return EvalIdentityFit(float(beta), float(-offset_chosen / beta), float(-offset_rejected / beta),
                           drift, scale, _slope_stderr(design, target, (beta, offset_chosen,
                                                                        offset_rejected)))


def _slope_stderr(design: np.ndarray, target: np.ndarray, coefficients: tuple) -> float:
    # OLS: var(beta) = s^2 [(X^T X)^-1]_00, with s^2 = RSS / (rows - columns).
    freedom = design.shape[0] - design.shape[1]
    gram = design.T @ design
    if freedom <= 0 or np.linalg.matrix_rank(gram) < design.shape[1]:
        return 0.0
    residual = target - design @ np.asarray(coefficients)
    variance = float(residual @ residual) / freedom * float(np.linalg.inv(gram)[0, 0])
    return float(np.sqrt(max(variance, 0.0)))
