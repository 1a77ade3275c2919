"""Findings, the check registry and the data each check receives."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import polars as pl

from dpodiag.compute.losses import LOSSES, LossSpec
from dpodiag.phrases import counted
from dpodiag.schema import Run

SEVERITIES = ("error", "warning", "info")
# Pair columns that only the report's charts read once the checks have run.
DISPLAY_ONLY = frozenset({"margin", "probability", "loss_recomputed"})
SMALL_INTEGERS = frozenset({"step", "chosen_length", "rejected_length"})
# Minimum train records for a trend, and the share of records in each end window.
MIN_TREND_STEPS = 5
END_WINDOW = 0.2


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


def _whole_below(values: pl.Series, bound: float) -> bool:
    """Return True when every non-null value is a whole number with |value| < bound (NaN and Inf
    are not)."""
    present = values.drop_nulls()
    return bool(((present.abs() < bound) & (present == present.round())).all())


class Skip(Exception):
    """Raised by a check that does not apply to a run. The message gives the reason."""


@dataclass
class RunData:
    """The data a check reads for one run: the run, its recomputed pairs and its step table."""

    run: Run
    steps: pl.DataFrame
    """One row per (split, step): step-log records, or the aggregates of the pair table."""
    pairs: pl.DataFrame | pl.LazyFrame | None = None
    """The recomputed pair table (pair logs only): a DataFrame, or for a streamed log a LazyFrame
    over its recomputed files. Checks read it through `scan_pairs` and `collect`."""
    moments: pl.DataFrame | None = None
    """Per-step sums of the pair table that per-step checks read (see
    `dpodiag.compute.moments`); computed on first use when the pipeline did not."""
    cache: dict[str, Any] = field(default_factory=dict)
    """Results shared by several checks, e.g. the loss identification."""
    scratch: Any = None
    """The temporary folder (a tempfile.TemporaryDirectory) that holds a streamed pair table's
    files; it is removed when this RunData is garbage-collected."""

    @property
    def name(self) -> str:
        return self.run.name

    def narrow_pairs(self, columns: Collection[str]) -> None:
        """Keep only `columns` of an in-memory pair table, in compact types, and release the run's
        table. The step table and the run's summary stay, and so does a streamed pair table."""
        if isinstance(self.pairs, pl.DataFrame):
            selected = [name for name in self.pairs.columns if name in columns]
            # The page draws these values with 4 significant digits, so float32 loses nothing
            # it shows. It halves what each run keeps in memory while the others are read.
            compact = [pl.col(name).cast(pl.Float32) for name in selected
                       if self.pairs.schema[name] == pl.Float64 and name in DISPLAY_ONLY]
            # Steps and token lengths below 2**31 fit in 32 bits exactly, and whole float lengths
            # below 2**24 fit in float32 exactly.
            compact += [pl.col(name).cast(pl.Int32) for name in selected
                        if self.pairs.schema[name] == pl.Int64 and name in SMALL_INTEGERS
                        and self.pairs.get_column(name).abs().max() < 2 ** 31]
            compact += [pl.col(name).cast(pl.Float32) for name in selected
                        if self.pairs.schema[name] == pl.Float64 and name in SMALL_INTEGERS
                        and _whole_below(self.pairs.get_column(name), 2 ** 24)]
            if "split" in selected and self.pairs.schema["split"] == pl.String:
                compact.append(pl.col("split").cast(pl.Categorical))
            self.pairs = self.pairs.select(selected).with_columns(compact)
        self.cache.clear()
        self.run.release_table()

    def release_pairs(self) -> None:
        """Drop the pair table, the run's table and the shared results, keeping the step table
        and the run's summary. For use once the checks have run, when nothing else reads them."""
        self.pairs = self.moments = None
        self.cache.clear()
        self.scratch = None
        self.run.release_table()

    @property
    def streaming(self) -> bool:
        """True when the pair table is a streamed scan, never held in memory whole."""
        return isinstance(self.pairs, pl.LazyFrame)

    @property
    def engine(self) -> str:
        """The polars engine for queries over the pair table."""
        return "streaming" if self.streaming else "auto"

    @property
    def pair_columns(self) -> list[str]:
        """Column names of the pair table; empty for a step log."""
        return [] if self.pairs is None else self.pairs.collect_schema().names()

    def scan_pairs(self) -> pl.LazyFrame:
        """Return the pair table as a LazyFrame (no copy of an in-memory table); skip the check
        on a step log."""
        if self.pairs is None:
            raise Skip("needs a pair log")
        return self.pairs.lazy()

    def collect(self, query: pl.LazyFrame) -> pl.DataFrame:
        """Run a query over the pair table, with the streaming engine for a streamed log."""
        return query.collect(engine=self.engine)

    def step_moments(self) -> pl.DataFrame:
        """Return the moments table of the pair table, computed on first use; skip the check on
        a step log."""
        if self.pairs is None:
            raise Skip("needs a pair log")
        if self.moments is None:
            from dpodiag.compute.moments import step_tables

            self.moments = step_tables(self.pairs)[1]
        return self.moments

    @property
    def loss_spec(self) -> LossSpec | None:
        return LOSSES.get(self.run.meta.loss_type or "")

    @property
    def dialect(self):
        """The step log's Dialect (dpodiag.dialects), or None for pair logs and unknown names."""
        if self.run.dialect is None:
            return None
        from dpodiag.dialects import DIALECTS
        return DIALECTS.get(self.run.dialect)

    def loss_type_for_checks(self, allow_default: bool = True) -> tuple[str | None, str]:
        """The loss type a check may assume, and where it comes from.

        The declared loss type comes first, then the one the dialect's keys prove; a step log of a
        reference-based DPO trainer otherwise runs that trainer's default, the sigmoid loss. An
        error-level check passes `allow_default=False`: a framework default is a guess, and the
        same trainers run ORPO, DPOP and other losses with the same keys.
        """
        if self.run.meta.loss_type is not None:
            return self.run.meta.loss_type, self.run.meta.source_of("loss_type") or "declared"
        dialect = self.dialect
        if dialect is not None and dialect.implied_loss_type:
            return dialect.implied_loss_type, f"implied by the {dialect.name} keys"
        if allow_default and dialect is not None and dialect.preference and dialect.paired \
                and not dialect.reference_free and not self.loss_rules_out_sigmoid():
            return "sigmoid", f"the {dialect.name} default"
        return None, "unknown"

    def loss_rules_out_sigmoid(self) -> bool:
        """True when a step log's train loss is below what the sigmoid loss can log.

        The sigmoid loss softplus(-m) is above 0 for every pair, and by Jensen its mean is at
        least softplus(-mean margin). A logged loss below 0 beyond the log's rounding, or a
        loss printed as 0 where softplus(-mean margin) would still print above 0, comes from
        another loss (robust past its zero, hinge at its minimum). Records with a NaN margin
        do not count: the HF Trainer logs a loss of 0 for a step whose loss was NaN.
        """
        train = self.split_steps("train")
        dialect = self.dialect
        if self.pairs is not None or not {"loss", "rewards_margins"} <= set(train.columns):
            return False
        decimals = dialect.loss_decimals if dialect is not None and dialect.loss_decimals else 8
        rounding = 0.5 * 10.0 ** -decimals
        settled = train.filter(pl.col("loss").is_finite() & pl.col("rewards_margins").is_finite())
        loss, margin = settled.get_column("loss").to_numpy(), settled.get_column("rewards_margins").to_numpy()
        if (loss < -rounding).any():
            return True
        if dialect is None or not dialect.rewards_beta_scaled:
            return False
        return bool(((loss == 0) & (np.logaddexp(0.0, -margin) > rounding)).any())

    def split_steps(self, split: str) -> pl.DataFrame:
        """Return the step-table rows of `split`, in step order. Split names are canonical:
        "train", "eval" (validation, test and dev), or another name kept in lower case."""
        return self.steps.filter(pl.col("split") == split).sort("step")

    def split_pairs(self, split: str) -> pl.LazyFrame:
        """Return the pair-table rows of `split` (a canonical name, see `split_steps`); skip the
        check on a step log."""
        return self.scan_pairs().filter(pl.col("split") == split)

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


def require_reference_loss(data: RunData) -> LossSpec | None:
    """Skip the check for a loss type that is known to be reference-free."""
    spec = data.loss_spec
    if spec is not None and not spec.needs_reference:
        raise Skip(f"{spec.name} is reference-free")
    dialect = data.dialect
    if dialect is not None and dialect.reference_free:
        raise Skip(f"the {dialect.name} objective is reference-free")
    return spec


def require_steps(data: RunData, split: str, columns: list[str], minimum: int) -> pl.DataFrame:
    """Return the split's step rows where every column is finite; skip with fewer than `minimum`."""
    missing = [c for c in columns if c not in data.steps.columns]
    if missing:
        raise Skip(f"the log has no {', '.join(missing)}")
    rows = data.split_steps(split)
    for column in columns:
        rows = rows.filter(pl.col(column).is_finite())
    if rows.height < minimum:
        raise Skip(f"needs at least {counted(minimum, split + ' record')} with {', '.join(columns)}")
    return rows


def finite_mean(rows: pl.DataFrame, column: str) -> float | None:
    """Return the mean of the finite values of `column` in `rows`; None when the column is
    missing or has no finite value."""
    if column not in rows.columns:
        return None
    values = rows.get_column(column)
    mean = values.filter(values.is_finite()).mean()
    return None if mean is None else float(mean)


def end_windows(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return the first and last END_WINDOW share of a step-sorted table (at least one row each)."""
    size = max(1, int(round(frame.height * END_WINDOW)))
    return frame.head(size), frame.tail(size)


def windows_phrase(early: pl.DataFrame, late: pl.DataFrame, split: str = "train") -> str:
    """Name the two end windows in a message: "the first and last 20% of train records
    (steps 0-15 and 65-80)"; a finding quotes their means, not single records."""
    def steps(frame: pl.DataFrame) -> str:
        first, last = int(frame.get_column("step").min()), int(frame.get_column("step").max())
        return str(first) if first == last else f"{first}-{last}"

    return (f"the first and last {END_WINDOW:.0%} of {split} records (steps {steps(early)} and "
            f"{steps(late)})")
