"""Recorder: the per-pair logger that a training loop calls once per batch.

    from dpodiag.record import Recorder

    with Recorder("runs/dpo-1/pairs", beta=0.1, loss_type="sigmoid", framework="my-loop") as recorder:
        for step, batch in enumerate(loader):
            ...  # forward passes: c, r under the policy, c0, r0 under the reference
            recorder.log(step=step, policy_chosen_logps=c, policy_rejected_logps=r,
                         reference_chosen_logps=c0, reference_rejected_logps=r0)

The recorder buffers rows in memory and writes them as parquet shards ``part-00000.parquet``,
``part-00001.parquet``, ... into its folder, in the canonical pair columns, with the run metadata
as JSON under the parquet key-value key "dpodiag". `dpodiag check FOLDER` reads every shard of the
folder as one run.

Durability. Each shard is written to a hidden temporary file in the folder, synced and renamed,
so a shard on disk is always complete. A flush happens inside `log` when the buffer contains
`flush_rows` rows or the last flush is `flush_seconds` old, and on `flush`, `close`, the end of
a ``with`` block (also when it raises) and interpreter exit (atexit). A process that is killed
(SIGKILL, the OOM killer, or SIGTERM without a handler, which skips atexit) loses the rows
buffered since the last flush. ``flush_rows=1`` writes one shard per `log` call, so only the
batch being logged can be lost, at the price of one small file and one fsync per call.
"""

from __future__ import annotations

import atexit
import io
import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dpodiag.errors import OutputError, UsageError
from dpodiag.io.metadata import METADATA_KEY, validate_meta
from dpodiag.outputs import write_atomic

# Per-pair numeric arguments of `Recorder.log`, in the column order of the shards.
VALUE_COLUMNS = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps",
                 "reference_rejected_logps", "chosen_length", "rejected_length", "loss")
REQUIRED_COLUMNS = ("policy_chosen_logps", "policy_rejected_logps")
# Shards that `dpodiag check FOLDER` reads as one run.
SHARD_GLOB = "part-*.parquet"

try:
    import torch
except ImportError:  # torch is a dependency of dpodiag, but the recorder needs it only for tensors
    torch = None


class Recorder:
    """Buffer per-pair rows and write them as parquet shards into `folder`.

    Args:
        folder: the run's folder; created when missing.
        beta, loss_type, label_smoothing, simpo_gamma, logps_normalisation, framework,
        policy_model, reference_model: run metadata stored in every shard (see README).
        extra_metadata: other JSON-serialisable settings stored beside the run metadata.
        flush_rows: write a shard once the buffer contains this many rows (1 = every `log` call).
        flush_seconds: write a shard at the first `log` call this many seconds after the last
            flush. No background thread runs, so rows logged before a long pause wait for
            the next call, `flush` or `close`.
        append: add shards to a folder that already contains shards of this prefix (a resumed
            run), numbering on after the last one. Without it such a folder is an error.
        shard_prefix: file name prefix of the shards; it must start with "part" so that the
            folder reader finds them, e.g. "part-rank1" for one process of a distributed run.

    A recorder is meant for one thread. Its columns are fixed by the first `log` call: an
    optional argument given then and omitted later is written as null, and one omitted then
    and given later is an error.
    """

    def __init__(self, folder: str | Path, *, beta: float | None = None, loss_type: str | None = None,
                 label_smoothing: float | None = None, simpo_gamma: float | None = None,
                 logps_normalisation: str | None = None, framework: str | None = None,
                 policy_model: str | None = None, reference_model: str | None = None,
                 extra_metadata: dict[str, Any] | None = None, flush_rows: int = 10_000,
                 flush_seconds: float = 60.0, append: bool = False, shard_prefix: str = "part"):
        if isinstance(flush_rows, bool) or not isinstance(flush_rows, int) or flush_rows < 1:
            raise UsageError(f"Recorder: expected flush_rows to be an integer >= 1, got {flush_rows!r}")
        if not isinstance(flush_seconds, (int, float)) or not flush_seconds > 0:
            raise UsageError(f"Recorder: expected flush_seconds to be a number > 0, got {flush_seconds!r}")
        if not re.fullmatch(r"part[A-Za-z0-9_.-]*", shard_prefix):
            raise UsageError(f"Recorder: expected shard_prefix to start with 'part' and contain only "
                             f"letters, digits, '_', '.' and '-', got {shard_prefix!r}")

        self.folder = Path(folder)
        self.flush_rows = flush_rows
        self.flush_seconds = float(flush_seconds)
        self.shard_prefix = shard_prefix
        self.metadata = _run_metadata(beta=beta, loss_type=loss_type, label_smoothing=label_smoothing,
                                      simpo_gamma=simpo_gamma, logps_normalisation=logps_normalisation,
                                      framework=framework, policy_model=policy_model,
                                      reference_model=reference_model, extra=extra_metadata)
        self.shards: list[Path] = []
        """Paths of the shards this recorder wrote, in order."""
        self.rows_written = 0

        self._next_index = _first_free_index(self.folder, shard_prefix, append)
        self._columns: tuple[str, ...] | None = None
        self._buffer: list[_Batch] = []
        self._buffered_rows = 0
        self._last_flush = time.monotonic()
        self._closed = False
        atexit.register(self.close)

    # Logging ------------------------------------------------------------------------------

    def log(self, *, step: int, policy_chosen_logps, policy_rejected_logps,
            reference_chosen_logps=None, reference_rejected_logps=None, chosen_length=None,
            rejected_length=None, example_id=None, loss=None, split: str = "train",
            epoch: float | None = None) -> None:
        """Buffer one row per pair of a batch, and write a shard when a flush is due.

        Values are torch tensors (any device), numpy arrays or lists, one value per pair and
        all of the same length. Log-probs are summed sequence log-probs in nats, lengths are
        response token counts, and `loss` is per pair or one number for the whole batch. NaN
        and infinite values are recorded as they are, because they are what a diagnosis looks
        for. `step` is the number of optimizer updates applied before the batch was scored.

        Raises:
            UsageError: the recorder is closed, or an argument has the wrong type or shape.
        """
        if self._closed:
            raise UsageError(f"Recorder for {self.folder} is closed; create a new Recorder to log more rows")
        per_pair = {"policy_chosen_logps": policy_chosen_logps, "policy_rejected_logps": policy_rejected_logps,
                    "reference_chosen_logps": reference_chosen_logps,
                    "reference_rejected_logps": reference_rejected_logps,
                    "chosen_length": chosen_length, "rejected_length": rejected_length, "loss": loss}
        per_pair = {name: value for name, value in per_pair.items() if value is not None}
        batch = _Batch(step=_step_value(step), split=_split_value(split), epoch=_epoch_value(epoch),
                       values=_float64_columns(per_pair))
        batch.example_ids = _example_ids(example_id, batch.size)
        self._check_columns(batch)

        self._buffer.append(batch)
        self._buffered_rows += batch.size
        if self._buffered_rows >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def _check_columns(self, batch: _Batch) -> None:
        """Fix the shard columns at the first call; later calls may omit but not add columns."""
        present = tuple(name for name in VALUE_COLUMNS if name in batch.values)
        if batch.example_ids is not None:
            present += ("example_id",)
        if batch.epoch is not None:
            present += ("epoch",)
        if self._columns is None:
            self._columns = present
            return
        added = [name for name in present if name not in self._columns]
        if added:
            raise UsageError(f"Recorder.log: {added[0]} was not given in the first call, so the shards "
                             f"have no such column; pass it from the first call on (None is allowed later)")

    # Writing ------------------------------------------------------------------------------

    def flush(self) -> Path | None:
        """Write the buffered rows as the next shard and return its path (None when empty).

        Raises:
            OutputError: the shard cannot be written; the rows stay buffered for a later flush.
        """
        if not self._buffer:
            self._last_flush = time.monotonic()
            return None
        table = self._buffered_table()
        sink = io.BytesIO()
        pq.write_table(table, sink)
        path = self.folder / f"{self.shard_prefix}-{self._next_index:05d}.parquet"
        write_atomic(path, sink.getvalue())

        self.shards.append(path)
        self.rows_written += table.num_rows
        self._next_index += 1
        self._buffer.clear()
        self._buffered_rows = 0
        self._last_flush = time.monotonic()
        return path

    def _buffered_table(self) -> pa.Table:
        """Concatenate the buffered batches into one table in the canonical column order."""
        # Per-batch values are repeated per row with numpy; object arrays are avoided because
        # pyarrow converts them through pandas.
        batches = self._buffer
        sizes = [batch.size for batch in batches]
        batch_of_row = np.repeat(np.arange(len(batches)), sizes)
        splits = pa.array([b.split for b in batches], type=pa.string())
        columns: dict[str, pa.Array] = {
            "step": pa.array(np.array([b.step for b in batches], dtype=np.int64)[batch_of_row]),
            "split": splits.take(pa.array(batch_of_row)),
        }
        if "example_id" in self._columns:
            ids = [i for b in batches for i in (b.example_ids if b.example_ids is not None else [None] * b.size)]
            columns["example_id"] = pa.array(ids, type=pa.string())
        if "epoch" in self._columns:
            epochs = np.array([np.nan if b.epoch is None else b.epoch for b in batches])[batch_of_row]
            no_epoch = np.array([b.epoch is None for b in batches])[batch_of_row]
            columns["epoch"] = pa.array(epochs, mask=no_epoch if no_epoch.any() else None)
        for name in VALUE_COLUMNS:
            if name not in self._columns:
                continue
            parts = [b.values[name] if name in b.values else np.full(b.size, np.nan) for b in batches]
            absent = np.concatenate([np.full(b.size, name not in b.values) for b in batches])
            columns[name] = pa.array(np.concatenate(parts), mask=absent if absent.any() else None)
        metadata = {METADATA_KEY.encode(): json.dumps(self.metadata).encode()}
        return pa.table(columns).replace_schema_metadata(metadata)

    def close(self) -> None:
        """Flush the buffered rows and stop accepting new ones. Closing twice does nothing."""
        if self._closed:
            return
        self.flush()
        self._closed = True
        atexit.unregister(self.close)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close()


class _Batch:
    """The rows of one `log` call: shared step, split and epoch, and per-pair float64 columns."""

    __slots__ = ("epoch", "example_ids", "size", "split", "step", "values")

    def __init__(self, step: int, split: str, epoch: float | None, values: dict[str, np.ndarray]):
        self.step = step
        self.split = split
        self.epoch = epoch
        self.values = values
        self.example_ids: list[str] | None = None
        self.size = len(values["policy_chosen_logps"])


def _run_metadata(*, extra: dict[str, Any] | None, **fields) -> dict[str, Any]:
    """Validate the run metadata and return the JSON object stored in every shard."""
    metadata = validate_meta(fields, "Recorder", UsageError)
    for name, value in (extra or {}).items():
        if name in metadata or name in fields:
            raise UsageError(f"Recorder: extra_metadata contains {name!r}, which is an argument of "
                             f"Recorder; pass {name}=... as the argument instead")
        if name == "trainer_config" and not isinstance(value, dict):
            raise UsageError(f"Recorder: expected extra_metadata['trainer_config'] to be a dict of "
                             f"trainer settings, got {value!r}")
        metadata[name] = value
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"Recorder: extra_metadata is not JSON-serialisable ({exc}); "
                         "pass strings, numbers, lists and dicts") from None
    return metadata


def _first_free_index(folder: Path, prefix: str, append: bool) -> int:
    """Return the index of the next shard, creating the folder when it is missing.

    Raises:
        OutputError: `folder` is a file, cannot be created, or contains shards and `append` is false.
    """
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: is a file; give the Recorder a folder for its shards")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the folder ({exc.strerror})") from None
    pattern = re.compile(rf"{re.escape(prefix)}-(\d+)\.parquet")
    indices = [int(match.group(1)) for path in folder.iterdir()
               if (match := pattern.fullmatch(path.name))]
    if indices and not append:
        raise OutputError(f"{folder}: contains {len(indices)} shards {prefix}-*.parquet already; pass "
                          "append=True to add to that run, or give the Recorder an empty folder")
    return max(indices) + 1 if indices else 0


# Argument conversion ------------------------------------------------------------------------


def _step_value(step) -> int:
    if torch is not None and isinstance(step, torch.Tensor) and step.numel() == 1 \
            and not step.is_floating_point() and step.dtype != torch.bool:
        step = step.item()
    if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)) or step < 0:
        raise UsageError(f"Recorder.log: expected step to be an integer >= 0 (optimizer updates "
                         f"applied before the batch was scored), got {step!r}")
    return int(step)


def _split_value(split) -> str:
    if not isinstance(split, str) or not split.strip():
        raise UsageError(f"Recorder.log: expected split to be a non-empty string such as 'train' or "
                         f"'eval', got {split!r}")
    return split


def _epoch_value(epoch) -> float | None:
    if epoch is None:
        return None
    if isinstance(epoch, (bool, np.bool_)) or not isinstance(epoch, (int, float, np.integer, np.floating)) \
            or not math.isfinite(epoch):
        raise UsageError(f"Recorder.log: expected epoch to be a finite number or None, got {epoch!r}")
    return float(epoch)


def _float64_columns(per_pair: dict[str, Any]) -> dict[str, np.ndarray]:
    """Convert the per-pair arguments to 1-D float64 numpy arrays of one length.

    Tensors on one device are stacked there and copied to the host in one transfer. Every
    returned array is a new copy, so later in-place changes by the caller do not reach the
    buffer. A scalar `loss` is one value for the whole batch.
    """
    size = _length_of(per_pair["policy_chosen_logps"], "policy_chosen_logps")
    columns: dict[str, np.ndarray] = {}
    by_device: dict[Any, list[tuple[str, Any]]] = {}
    for name, value in per_pair.items():
        if torch is not None and isinstance(value, torch.Tensor):
            _check_tensor(name, value, size)
            by_device.setdefault(value.device, []).append((name, value))
        else:
            columns[name] = _array_column(name, value, size)

    for tensors in by_device.values():
        rows = [value.detach().reshape(-1).expand(size).to(torch.float64) for _, value in tensors]
        host = torch.stack(rows).cpu().numpy()
        for index, (name, _) in enumerate(tensors):
            columns[name] = host[index]
    return columns


def _length_of(value, name: str) -> int:
    shape = tuple(value.shape) if hasattr(value, "shape") else np.shape(value)
    if len(shape) != 1:
        raise UsageError(f"Recorder.log: expected {name} to be 1-D with one value per pair, got shape "
                         f"{shape}; pass a flat tensor, array or list")
    return shape[0]


def _check_tensor(name: str, value, size: int) -> None:
    if value.dtype == torch.bool or value.is_complex():
        raise UsageError(f"Recorder.log: expected {name} to hold real numbers, got a {value.dtype} tensor")
    _check_shape(name, tuple(value.shape), size)


def _check_shape(name: str, shape: tuple, size: int) -> None:
    if name == "loss" and shape in ((), (1,)):
        return
    if shape != (size,):
        raise UsageError(f"Recorder.log: {name} has shape {shape}, expected ({size},) like "
                         f"policy_chosen_logps; pass one value per pair")


def _array_column(name: str, value, size: int) -> np.ndarray:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)):
        value = [value]
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise UsageError(f"Recorder.log: expected {name} to hold real numbers, got dtype {array.dtype}")
    _check_shape(name, array.shape, size)
    return np.array(np.broadcast_to(array.astype(np.float64, copy=False), (size,)), dtype=np.float64)


def _example_ids(example_id, size: int) -> list[str] | None:
    """Return the pair ids as strings, or None when none were given."""
    if example_id is None:
        return None
    if torch is not None and isinstance(example_id, torch.Tensor):
        example_id = example_id.detach().cpu().tolist()
    elif isinstance(example_id, np.ndarray):
        example_id = example_id.tolist()
    if isinstance(example_id, (str, bytes)) or not isinstance(example_id, Sequence):
        raise UsageError(f"Recorder.log: expected example_id to be a list of ids, one per pair, got "
                         f"{type(example_id).__name__}")
    if len(example_id) != size:
        raise UsageError(f"Recorder.log: example_id has {len(example_id)} ids, expected {size} like "
                         "policy_chosen_logps; pass one id per pair")
    return [None if value is None else str(value) for value in example_id]


__all__ = ["SHARD_GLOB", "Recorder"]
