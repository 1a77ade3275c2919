"""The choice between reading a pair log into memory and streaming it.

A streamed log is scanned in chunks by polars' streaming engine and never held in memory as a
whole; its recomputed pairs go to a temporary parquet file that the checks and the report scan.
Streaming is chosen by `--streaming` / `--in-memory`, else by the environment variable
DPODIAG_STREAMING ("1" streams, "0" reads into memory), else automatically when the estimated
in-memory size of the log exceeds STREAMING_SHARE of the memory available to the process.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import polars as pl

from dpodiag.errors import UsageError

STREAMING_ENV = "DPODIAG_STREAMING"
# Share of the available memory that the in-memory path may plan to use.
STREAMING_SHARE = 0.4
# Bytes per row and column in memory: 8 for numbers, about 16 for short strings (polars string
# views). The recompute adds DERIVED_BYTES per row, and reading and recomputing hold about
# PEAK_FACTOR times the table at their peak. Both are estimates from the benchmark logs.
NUMBER_BYTES = 8
TEXT_BYTES = 16
DERIVED_BYTES = 7 * 8
PEAK_FACTOR = 2.0
# Bytes per row that `dpodiag report` keeps of each run read before the current one: the pair
# columns the page reads, in compact types. This is an estimate: the 10M benchmark log takes
# 48 bytes per row by polars' estimated_size, and longer ids or texts take more.
KEPT_BYTES = 80


def streaming_requested(option: bool | None) -> bool | None:
    """Return the command-line choice, else the environment's, else None (decide by size).

    Raises:
        UsageError: DPODIAG_STREAMING is set to something other than "0" or "1".
    """
    if option is not None:
        return option
    value = os.environ.get(STREAMING_ENV, "").strip()
    if value == "":
        return None
    if value not in ("0", "1"):
        raise UsageError(f"expected {STREAMING_ENV} to be 0 or 1, got {value!r}; unset it or use "
                         "--streaming / --in-memory")
    return value == "1"


def available_memory() -> int | None:
    """Bytes the process can still allocate: the smaller of MemAvailable (Linux) and the
    address-space limit (`ulimit -v`) less what the process maps now; None when unknown."""
    limits = []
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(max(soft - _mapped_bytes(), 0))
    return min(limits) if limits else None


def _mapped_bytes() -> int:
    """Virtual memory the process maps now (VmSize), 0 when unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def estimated_bytes(rows: int, schema: pl.Schema, largest_run: int | None = None) -> int:
    """Estimate the peak bytes of reading and recomputing `rows` rows of the columns in `schema`.

    With `largest_run`, the rows of the largest run of a log read one run at a time: the peak
    then contains that run's full table, and KEPT_BYTES per row of every other run.
    """
    per_row = DERIVED_BYTES + sum(TEXT_BYTES if dtype in (pl.String, pl.Categorical) else NUMBER_BYTES
                                  for dtype in schema.values())
    if largest_run is None:
        return int(rows * per_row * PEAK_FACTOR)
    return int(largest_run * per_row * PEAK_FACTOR + (rows - largest_run) * KEPT_BYTES)


def parquet_rows(paths: list[Path]) -> int:
    """Row count of parquet files from their footers, without reading any data."""
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(path).num_rows for path in paths)


def should_stream(requested: bool | None, rows: int | None, schema: pl.Schema,
                  largest_run: int | None = None) -> bool:
    """Decide streaming: an explicit request wins; otherwise stream when the estimate for
    `rows` rows (see `estimated_bytes`) exceeds STREAMING_SHARE of the available memory (never
    when either is unknown)."""
    if requested is not None:
        return requested
    available = available_memory()
    if rows is None or available is None:
        return False
    return estimated_bytes(rows, schema, largest_run) > STREAMING_SHARE * available
