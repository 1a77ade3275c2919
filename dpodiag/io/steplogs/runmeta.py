"""Run metadata of a step log: what the trainer's files declare, then what the dialect implies."""

from __future__ import annotations

from typing import Any

import polars as pl

from dpodiag.dialects import Dialect
from dpodiag.schema import RunMeta


def run_meta(values: dict[str, Any], dialect: Dialect, table: pl.DataFrame,
             notes: list[str]) -> RunMeta:
    """Fill RunMeta from trainer-file `values`, then from what `dialect` and the columns imply."""
    meta = RunMeta()
    meta.update(values, "trainer-config")
    meta.trainer_config.update(values.get("trainer_config", {}))
    inferred: dict[str, Any] = {}
    if dialect.framework and meta.framework is None:
        inferred["framework"] = dialect.framework
    implied = dialect.implied_loss_type or next(
        (loss for column, loss in dialect.loss_type_markers.items() if column in table.columns),
        None)
    if meta.loss_type is None and implied:
        inferred["loss_type"] = implied
    elif implied and meta.loss_type == "sigmoid" and dialect.implied_loss_type:
        # sigmoid is the default of TRL's DPOConfig and CPOConfig. A fork that subclasses the
        # trainer and computes its own loss (SimPO forks of DPOTrainer) keeps that default in
        # its config, while its logged keys show the loss it computes.
        inferred["loss_type"] = implied
        notes.append(f"the trainer config declares loss_type sigmoid, TRL's default, but the "
                     f"logged keys are those of {implied} ({dialect.description}); {implied} "
                     "is used")
    elif implied and meta.loss_type != implied:
        notes.append(f"the trainer config declares loss_type {meta.loss_type}, but the logged "
                     f"keys are those of {implied} ({dialect.name}: {dialect.description})")
    meta.update(inferred, "inferred")
    if "loss_type" in inferred:
        meta.inference["loss_type"] = {"method": f"its keys are those of the {dialect.name} dialect"}
    _apply_label_smoothing(meta, dialect, notes)
    if meta.logps_normalisation is None:
        summed = "avg_logps_chosen" in table.columns
        normalisation = "sum" if summed else dialect.logps_normalisation(meta.loss_type)
        meta.update({"logps_normalisation": normalisation}, "inferred")
    if not dialect.preference:
        meta.loss_type = None
        meta.sources.pop("loss_type", None)
        notes.append(f"not a DPO-family log ({dialect.description}); preference checks do "
                     "not apply")
    return meta


def _apply_label_smoothing(meta: RunMeta, dialect: Dialect, notes: list[str]) -> None:
    # Sigmoid with label smoothing is cDPO, except in TRL >= 0.29, whose sigmoid ignores it.
    if meta.loss_type != "sigmoid" or not meta.label_smoothing:
        return
    if dialect.name == "trl-v1":
        notes.append("label_smoothing is set, but TRL >= 0.29 ignores it for loss_type sigmoid")
        return
    meta.loss_type = "cdpo"
    notes.append(f"loss_type sigmoid with label_smoothing {meta.label_smoothing:g} is cDPO")
