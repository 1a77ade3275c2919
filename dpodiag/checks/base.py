"""Findings, the check registry and the data each check receives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import polars as pl

from dpodiag.compute.losses import LOSSES, LossSpec
from dpodiag.schema import Run

SEVERITIES = ("error", "warning", "info")


@dataclass
class Finding:
    """One diagnosis about one run, with the numbers that support it."""

    code: str
    severity: str
    run: str
    title: str
    message: str
    split: str | None = None
    step: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "run": self.run, "split": self.split,
                "step": self.step, "title": self.title, "message": self.message,
                "evidence": self.evidence}


class Skip(Exception):
    """Raised by a check that does not apply to a run; the message says why."""


@dataclass
class RunData:
    """What a check sees of one run: the run, its recomputed pairs and its step table."""

    run: Run
    steps: pl.DataFrame
    """One row per (split, step): step-log records, or the aggregates of the pair table."""
    pairs: pl.DataFrame | None = None
    """The recomputed pair table (pair logs only)."""
    cache: dict[str, Any] = field(default_factory=dict)
    """Results shared by several checks, e.g. the loss identification."""

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def loss_spec(self) -> LossSpec | None:
        return LOSSES.get(self.run.meta.loss_type or "")

    def split_steps(self, split: str) -> pl.DataFrame:
        return self.steps.filter(pl.col("split") == split).sort("step")

    def split_pairs(self, split: str) -> pl.DataFrame:
        assert self.pairs is not None
        return self.pairs.filter(pl.col("split") == split)

    def finding(self, code: str, title: str, message: str, **kwargs) -> Finding:
        """Make a Finding of check `code` for this run with the registered severity."""
        return Finding(code=code, severity=REGISTRY[code].severity, run=self.name, title=title,
                       message=message, **kwargs)


@dataclass(frozen=True)
class CheckSpec:
    """A registered check: its code, severity, evidence levels and documentation."""

    code: str
    severity: str
    levels: tuple[str, ...]
    """"pairs", "steps" or both: the evidence levels the check runs on."""
    fn: Callable[[RunData], list[Finding]]
    meaning: str
    causes: str
    fix: str


REGISTRY: dict[str, CheckSpec] = {}


def check(code: str, severity: str, levels: tuple[str, ...], *, meaning: str, causes: str,
          fix: str) -> Callable:
    """Register the decorated function as the check `code`."""
    assert severity in SEVERITIES

    def register(fn: Callable[[RunData], list[Finding]]):
        REGISTRY[code] = CheckSpec(code, severity, levels, fn, meaning, causes, fix)
        return fn

    return register


def require_pairs(data: RunData) -> pl.DataFrame:
    """Return the pair table or skip the check on a step log."""
    if data.pairs is None:
        raise Skip("needs a pair log")
    return data.pairs


def require_reference_loss(data: RunData) -> LossSpec | None:
    """Skip the check for a loss type that is known to be reference-free."""
    spec = data.loss_spec
    if spec is not None and not spec.needs_reference:
        raise Skip(f"{spec.name} is reference-free")
    return spec
