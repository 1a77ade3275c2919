"""Canonical tables and run metadata.

Two evidence levels exist. A *pair table* has one row per preference pair scored at a step; a
*step table* has one row per (split, logged step) with aggregates that a trainer logged. Both are
polars DataFrames whose column names are fixed here, so that every reader produces them and every
computation and check consumes them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import polars as pl

# The position of a row in its source file. A streamed run's table carries it, so that the log is
# read in windows of source rows; the recomputed pair table does not.
SOURCE_ROW = "source_row"

# Pair-table columns: name -> polars dtype. Required ones are listed in PAIR_REQUIRED.
PAIR_COLUMNS: dict[str, Any] = {
    "step": pl.Int64,
    "split": pl.Utf8,
    "example_id": pl.Utf8,
    "epoch": pl.Float64,
    "policy_chosen_logps": pl.Float64,
    "policy_rejected_logps": pl.Float64,
    "reference_chosen_logps": pl.Float64,
    "reference_rejected_logps": pl.Float64,
    "chosen_logratio": pl.Float64,
    "rejected_logratio": pl.Float64,
    "chosen_length": pl.Float64,
    "rejected_length": pl.Float64,
    "loss": pl.Float64,
    "beta": pl.Float64,
    "preference_strength": pl.Float64,
    "run": pl.Utf8,
    "prompt": pl.Utf8,
    "chosen": pl.Utf8,
    "rejected": pl.Utf8,
}
FLOAT_PAIR_COLUMNS = [name for name, dtype in PAIR_COLUMNS.items() if dtype == pl.Float64]
TEXT_PAIR_COLUMNS = ["prompt", "chosen", "rejected"]

# Other names that trainers and tools use for the canonical pair columns. Matching ignores case.
PAIR_ALIASES: dict[str, list[str]] = {
    "step": ["global_step", "training_step", "train_step", "optimizer_step", "iteration", "iter"],
    "split": ["mode", "phase", "stage"],
    "example_id": ["id", "pair_id", "index", "idx", "sample_id", "prompt_id", "uid"],
    "policy_chosen_logps": ["chosen_logps", "policy_chosen_logp", "chosen_logp", "logps_chosen",
                            "logp_chosen", "policy_logps_chosen", "pi_chosen_logps"],
    "policy_rejected_logps": ["rejected_logps", "policy_rejected_logp", "rejected_logp",
                              "logps_rejected", "logp_rejected", "policy_logps_rejected",
                              "pi_rejected_logps"],
    "reference_chosen_logps": ["ref_chosen_logps", "ref_chosen_logp", "reference_chosen_logp",
                               "ref_logps_chosen", "reference_logps_chosen",
                               "reference_score_chosen"],
    "reference_rejected_logps": ["ref_rejected_logps", "ref_rejected_logp",
                                 "reference_rejected_logp", "ref_logps_rejected",
                                 "reference_logps_rejected", "reference_score_rejected"],
    "chosen_logratio": ["chosen_log_ratio", "chosen_logratios", "scores_chosen"],
    "rejected_logratio": ["rejected_log_ratio", "rejected_logratios", "scores_rejected"],
    "chosen_length": ["chosen_len", "len_chosen", "chosen_tokens", "chosen_num_tokens"],
    "rejected_length": ["rejected_len", "len_rejected", "rejected_tokens", "rejected_num_tokens"],
    "loss": ["pair_loss", "losses", "per_pair_loss"],
    "preference_strength": ["agreement", "label_confidence", "preference_probability"],
    "run": ["run_name", "run_id"],
}

# Step-table metric columns, shared by step logs and the aggregates of pair logs.
STEP_KEYS = ["run", "split", "step"]
STEP_METRICS = [
    "epoch", "loss", "rewards_chosen", "rewards_rejected", "rewards_margins",
    "rewards_accuracies", "logps_chosen", "logps_rejected", "logits_chosen", "logits_rejected",
    "grad_norm", "learning_rate", "nll_loss",
]

SPLITS = ("train", "eval")
# Step-log formats that keep each metric's final value only, not its history (Run.format).
SUMMARY_FORMATS = ("wandb-summary", "hf-results", "tag-summary")

# Sources of a metadata value, in increasing precedence. "inferred" and "default" fill gaps.
META_SOURCES = ("default", "inferred", "trainer-config", "metadata", "sidecar", "flag")


@dataclass
class RunMeta:
    """Run metadata with the source of each value that is set."""

    beta: float | None = None
    """Inverse temperature of the implicit reward; None when unknown."""
    loss_type: str | None = None
    """A loss variant name from `dpodiag.compute.losses.LOSSES`; None when unknown."""
    label_smoothing: float = 0.0
    """Preference flip rate eps of cDPO, robust and EXO."""
    simpo_gamma: float | None = None
    """Target reward margin of SimPO."""
    logps_normalisation: str | None = None
    """"sum" for summed sequence log-probs, "mean" for per-token averages."""
    framework: str | None = None
    policy_model: str | None = None
    reference_model: str | None = None
    trainer_config: dict[str, Any] = field(default_factory=dict)
    """Other trainer settings that change what is logged (use_weighting, ld_alpha, rpo_alpha,
    f_divergence_type, sync_ref_model, ...), as the trainer's own files state them."""
    sources: dict[str, str] = field(default_factory=dict)
    """Field name -> one of META_SOURCES."""
    inference: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Field name -> the evidence for a value whose source is "inferred" or "default"."""

    def update(self, values: dict[str, Any], source: str) -> None:
        """Set each known, non-null field of `values`, recording `source` for it."""
        for key, value in values.items():
            if key in self.__dataclass_fields__ and key not in ("sources", "trainer_config", "inference") \
                    and value is not None:
                setattr(self, key, value)
                self.sources[key] = source

    def source_of(self, name: str) -> str | None:
        return self.sources.get(name)


@dataclass
class Run:
    """One run as read from its source, in canonical form."""

    name: str
    source: str
    level: str
    """"pairs" or "steps"."""
    table: pl.DataFrame | pl.LazyFrame
    """The canonical table; a LazyFrame for a pair log read in streaming mode (see
    `dpodiag.io.budget`), whose rows are never all in memory at once."""
    meta: RunMeta
    format: str
    """The detected input format, e.g. "parquet", "trainer_state.json"."""
    dialect: str | None = None
    column_mapping: dict[str, str] = field(default_factory=dict)
    """Canonical column -> the name it had in the input."""
    notes: list[str] = field(default_factory=list)
    """Rows dropped, values repaired and other things the reader did to the input."""
    step_source: str = "logged"
    """"logged" when steps come from the input, "counted" when the reader numbered records
    because the input has no step key (so step 1 need not be the first optimizer step)."""
    _summary: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    pending: Callable[[pl.LazyFrame], pl.DataFrame] | None = field(default=None, repr=False, compare=False)
    """The function that `materialise` reads `table` with, while `table` is the LazyFrame plan
    of a run read with `defer`. Such a run is not streamed."""
    released: bool = field(default=False, repr=False, compare=False)
    """True once `release_table` has emptied the table; rows, splits and steps still describe it."""
    _reading: Future | None = field(default=None, repr=False, compare=False)

    @property
    def streaming(self) -> bool:
        """True when the table is a LazyFrame that is scanned, not held in memory."""
        return isinstance(self.table, pl.LazyFrame) and self.pending is None

    def materialise(self) -> None:
        """Read a deferred table into memory (see `pending`), or wait for the read that
        `read_ahead` started; other tables stay as they are."""
        if self._reading is not None:
            reading, self._reading = self._reading, None
            self.table, self.pending = reading.result(), None
        elif self.pending is not None:
            self.table, self.pending = self.pending(self.table), None

    def read_ahead(self) -> None:
        """Start reading a deferred table (see `pending`) on another thread; `materialise` waits
        for it and raises what the read raised. Polars releases the GIL while it reads, so the
        caller meanwhile imports modules or analyses another run, on the other cores. Does
        nothing for a table that is not deferred or already being read. The thread is a daemon,
        so a process stopped by Ctrl-C exits without waiting for the read to end.
        """
        if self.pending is None or self._reading is not None:
            return
        reading: Future = Future()
        read, plan = self.pending, self.table

        def work() -> None:
            try:
                reading.set_result(read(plan))
            except BaseException as exc:  # noqa: BLE001  (raised again by materialise)
                reading.set_exception(exc)

        self._reading = reading
        threading.Thread(target=work, name=f"dpodiag-read-{self.name}", daemon=True).start()

    @property
    def columns(self) -> list[str]:
        """The canonical columns of the table (without a streamed run's SOURCE_ROW)."""
        return [name for name in self.table.collect_schema().names() if name != SOURCE_ROW]

    @property
    def rows(self) -> int:
        self.materialise()
        return self._table_summary()["rows"] if self.streaming or self.released else self.table.height

    def release_table(self) -> None:
        """Replace an in-memory table by an empty one with the same columns, so that its memory
        can be freed. `rows`, `splits` and `steps` keep describing the table as read."""
        if self.streaming or self.released:
            return
        summary = dict(self._table_summary())
        self.table = self.table.clear()
        self._summary = {**summary, "table": id(self.table)}
        self.released = True

    @property
    def splits(self) -> list[str]:
        present = set(self._table_summary()["splits"])
        return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))

    @property
    def steps(self) -> tuple[int | None, int | None]:
        summary = self._table_summary()
        return summary["first_step"], summary["last_step"]

    def _table_summary(self) -> dict[str, Any]:
        """Rows, splits and first and last step; one streaming scan for a LazyFrame, cached
        because a scanned table does not change."""
        self.materialise()
        if not self.streaming:
            # A DataFrame is replaced, never changed in place, so its id identifies its summary.
            if self._summary is None or self._summary.get("table") != id(self.table):
                self._summary = {**_summarise(self.table), "table": id(self.table)}
            return self._summary
        if self._summary is None:
            counts = self.table.select(pl.len().alias("rows"), pl.col("step").min().alias("first_step"),
                                       pl.col("step").max().alias("last_step")).collect(engine="streaming")
            splits = self.table.select(pl.col("split").unique()).collect(engine="streaming")
            self._summary = {**counts.row(0, named=True), "splits": splits.get_column("split").to_list()}
        return self._summary


def _summarise(table: pl.DataFrame) -> dict[str, Any]:
    steps = table.get_column("step")
    empty = steps.len() == 0
    return {"rows": table.height, "splits": table.get_column("split").unique().to_list(),
            "first_step": None if empty else int(steps.min()),
            "last_step": None if empty else int(steps.max())}


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
