"""Fits of the logged per-pair loss (beta, scale, variant), shared by the loss checks."""

from __future__ import annotations

import polars as pl

from dpodiag.checks.base import RunData, Skip
from dpodiag.checks.settings import settings_skip_reason
from dpodiag.compute.identify import Identification, LossFit, identify


def identifications(data: RunData) -> dict[str, Identification]:
    """Fit the logged per-pair losses of each split once per run (cached).

    Splits are fitted apart because trainers reduce them apart: a loss divided by the
    gradient-accumulation steps in training is logged unscaled in evaluation.
    """
    if "identification" not in data.cache:
        pairs = data.scan_pairs()
        meta = data.run.meta
        if "loss" not in data.pair_columns:
            raise Skip("the log has no per-pair loss column")
        if meta.loss_type is None or meta.beta is None:
            raise Skip("loss type or beta is not declared")
        if reason := settings_skip_reason(meta.trainer_config):
            raise Skip(reason)
        fits = {}
        for split in data.run.splits:
            fit = identify(pairs.filter(pl.col("split") == split), meta.loss_type, meta.beta,
                           meta.label_smoothing, meta.simpo_gamma,
                           per_token=meta.logps_normalisation == "mean", engine=data.engine)
            if fit is not None and fit.declared is not None:
                fits[split] = fit
        data.cache["identification"] = fits
    if not data.cache["identification"]:
        raise Skip("too few rows with a finite logged loss")
    return data.cache["identification"]


def explains(rmse: float, ident: Identification) -> bool:
    """True when a fit reproduces the logged loss to within 1% of its RMS (bf16 loss values
    carry ~0.4% relative error) or 1e-4 (4-decimal rounding)."""
    return rmse <= max(0.01 * ident.logged_rms, 1e-4)


def declared_fails(ident: Identification) -> bool:
    return not explains(ident.declared.rmse / 5, ident)


def source_word(data: RunData, name: str, declared: str = "declared") -> str:
    """Return how the run's setting `name` was set, as a word for messages: "given" (a
    command-line flag), "assumed default", "inferred", or `declared` (read from the log, its
    sidecar or its trainer config)."""
    return {"flag": "given", "default": "assumed default",
            "inferred": "inferred"}.get(data.run.meta.source_of(name) or "", declared)


def fits_text(data: RunData, split: str, ident: Identification) -> str:
    """Return the first sentence of a loss-fit finding: the RMSE against the declared
    configuration, with how the loss type and beta were set (see `source_word`)."""
    loss_word, beta_word = source_word(data, "loss_type"), source_word(data, "beta")
    beta = f"beta {ident.declared.beta:g}" if beta_word == loss_word else f"the {beta_word} beta {ident.declared.beta:g}"
    return (f"On {split} pairs the logged loss has RMSE {ident.declared.rmse:.3g} against the "
            f"{loss_word} {ident.declared.loss_type} at {beta}")


def options_text(fit: LossFit) -> str:
    """Return " (label_smoothing 0.1)" for a fit with an option, else ""."""
    return "".join(f" ({name} {value:.3g})" for name, value in fit.options.items())


def variant_text(fit: LossFit) -> str:
    """Return "cdpo at beta 0.1 and label_smoothing 0.1": a fitted variant and its settings."""
    options = "".join(f" and {name} {value:.3g}" for name, value in fit.options.items())
    return f"{fit.loss_type} at beta {fit.beta:.4g}{options}"


def explained_by_declared_family(ident: Identification) -> bool:
    """True when another beta, a constant scale or a flipped sign of the declared loss explains the log."""
    fits = [ident.beta_fit, ident.scale_fit, ident.sign_flipped]
    return any(fit is not None and explains(fit.rmse, ident) for fit in fits)


def first_split(data: RunData, hits: dict) -> tuple[str, list[str]]:
    """The split a finding is reported on (train first) and every split where it holds."""
    splits = [split for split in data.run.splits if split in hits]
    return splits[0], splits


def fitted_loss_type(data: RunData) -> str | None:
    """Return the loss variant that explains the logged train loss when the declared one does
    not (what loss-type-mismatch reports), else None. A check of the dynamics should follow the
    loss the trainer ran, not the one it recorded."""
    try:
        ident = identifications(data).get("train")
    except Skip:
        return None
    if ident is None or not declared_fails(ident) or explained_by_declared_family(ident):
        return None
    best = ident.best_variant()
    if best is None or best.loss_type == ident.declared.loss_type or not explains(best.rmse, ident):
        return None
    return best.loss_type
