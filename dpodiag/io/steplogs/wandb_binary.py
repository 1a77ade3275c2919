"""W&B binary run files (`run-<id>.wandb`), read without network or a W&B account.

The file is wandb's transaction log: a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then
LevelDB-log framing. The file is cut into 32 KiB blocks, and each record is stored as one or
more chunks, each with a 7-byte header (CRC-32 of the type byte and the data, data length,
chunk type FULL/FIRST/MIDDLE/LAST). A block tail shorter than a chunk header is zero padding.
The framing is walked here. The records are `Record` protobuf messages, decoded with the
classes of the wandb package (the optional dependency `pip install 'dpodiag[wandb]'`).

History records hold one logged row each, with every value JSON-encoded. Config records hold the
run settings (for a TRL run, the DPOConfig fields), which are read as run metadata. wandb
flushes history in batches, so the last rows of a run that was killed can be missing here while
its console log (`files/output.log`) has them.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any, Iterator

from dpodiag.errors import InputError, NoDataError
from dpodiag.io.steplogs.sidecars import config_values, describe
from dpodiag.io.steplogs.table import RawLog, numeric_items

MAGIC = b":W&B"
FILE_HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
BLOCK_SIZE = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def sniff(path: Path, head: bytes) -> str | None:
    """Return "wandb-binary" for a file that starts with the W&B header."""
    return "wandb-binary" if head.startswith(MAGIC) else None


def read(path: Path, fmt: str = "wandb-binary") -> RawLog:
    """Read the history rows of a run file, one record per row, and its config as metadata."""
    record_class = _record_class(path)
    data = path.read_bytes()
    payloads, framing_notes = _payloads(data, path)

    records: list[dict[str, float]] = []
    config: dict[str, Any] = {}
    dropped: set[str] = set()
    counts: dict[str, int] = {}
    for payload in payloads:
        record = record_class()
        try:
            record.ParseFromString(payload)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError is not importable everywhere
            counts["undecodable"] = counts.get("undecodable", 0) + 1
            continue
        kind = record.WhichOneof("record_type")
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "history":
            row, skipped = numeric_items(_items(record.history.item))
            dropped.update(skipped)
            records.append(row)
        elif kind == "config":
            config.update(_items(record.config.update))
        elif kind == "run":
            config.update(_items(record.run.config.update))

    if not records:
        raise NoDataError(path, "no history rows in this W&B run file",
                          "pass the run's files/output.log, or a file of a run that logged "
                          "metrics")
    notes = [f"W&B run file: {len(payloads)} records, {counts.get('history', 0)} history rows "
             "(rows still buffered when the run ended are missing; files/output.log may have "
             "more)", *framing_notes]
    if counts.get("undecodable"):
        notes.append(f"{counts['undecodable']} records could not be decoded and were skipped")
    if dropped:
        notes.append(f"non-numeric history keys not read: {', '.join(sorted(dropped)[:8])}")
    meta, meta_notes, hints = config_values(config)
    if meta:
        meta_notes.insert(0, f"metadata from the run file's config: {describe(meta)}")
    return RawLog(records=records, format="wandb-binary", notes=notes + meta_notes, meta=meta,
                  hints=hints)


def _record_class(path: Path) -> Any:
    # Import lazily: wandb is an optional dependency, and importing it costs about half a second.
    try:
        from wandb.proto import wandb_internal_pb2
    except ImportError:
        raise InputError(path, "is a W&B binary run file (.wandb), and reading it needs the "
                         "optional wandb package",
                         "install it with: pip install 'dpodiag[wandb]', or pass the run's "
                         "files/output.log instead") from None
    return wandb_internal_pb2.Record


def _payloads(data: bytes, path: Path) -> tuple[list[bytes], list[str]]:
    """Reassemble the record payloads from the chunk framing; return them and reader notes."""
    if len(data) < FILE_HEADER.size:
        raise InputError(path, "is cut off inside the W&B file header",
                         "pass the complete run file")
    ident, magic, version = FILE_HEADER.unpack_from(data)
    if ident != MAGIC or magic != 0xBEE1 or version != 0:
        raise InputError(path, f"has an unknown W&B file header (magic {magic:#x}, version "
                         f"{version})", "pass a run file written by wandb 0.10 or later, or its "
                         "files/output.log")

    payloads: list[bytes] = []
    notes: list[str] = []
    bad_checksums = 0
    pending: bytearray | None = None
    for offset, kind, chunk, valid in _chunks(data, FILE_HEADER.size, notes):
        if not valid:
            bad_checksums += 1
            pending = None
            continue
        if kind == FULL:
            payloads.append(chunk)
        elif kind == FIRST:
            pending = bytearray(chunk)
        elif kind in (MIDDLE, LAST) and pending is not None:
            pending += chunk
            if kind == LAST:
                payloads.append(bytes(pending))
                pending = None
        else:
            notes.append(f"byte {offset}: chunk type {kind} out of sequence; the rest of the "
                         "file was not read")
            break

    if pending is not None:
        notes.append("the last record is cut off where the file ends (wandb was still "
                     "writing it); the records before it were read")
    if bad_checksums:
        notes.append(f"{bad_checksums} chunks failed their CRC-32 check and were skipped")
    return payloads, notes


def _chunks(data: bytes, offset: int, notes: list[str]) -> Iterator[tuple[int, int, bytes, bool]]:
    # Yield (offset, chunk type, data, checksum valid) for each chunk, stopping at the file end.
    size = len(data)
    while offset < size:
        left_in_block = BLOCK_SIZE - offset % BLOCK_SIZE
        if left_in_block < CHUNK_HEADER.size:
            offset += left_in_block
            continue
        if offset + CHUNK_HEADER.size > size:
            notes.append(f"byte {offset}: the file ends inside a chunk header; the records "
                         "before it were read")
            return
        checksum, length, kind = CHUNK_HEADER.unpack_from(data, offset)
        if checksum == 0 and length == 0 and kind == 0:
            # Zero padding up to the next block.
            offset += left_in_block
            continue
        start = offset + CHUNK_HEADER.size
        chunk = data[start:start + length]
        if len(chunk) < length:
            notes.append(f"byte {offset}: the last chunk is cut off where the file ends; the "
                         "records before it were read")
            return
        valid = zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum
        yield offset, kind, chunk, valid
        offset = start + length


def _items(items: Any) -> dict[str, Any]:
    # History and config items: `key` or, for nested keys, `nested_key` parts joined by "/".
    values: dict[str, Any] = {}
    for item in items:
        key = item.key or "/".join(item.nested_key)
        try:
            values[key] = json.loads(item.value_json)
        except ValueError:
            values[key] = item.value_json
    return values
