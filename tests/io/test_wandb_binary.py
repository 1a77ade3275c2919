"""W&B binary run files written here with wandb's protobuf classes and the LevelDB-log framing."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from dpodiag.errors import InputError, NoDataError
from dpodiag.io.steplogs import read_step_log, sniff_step_log

pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

BLOCK = 32 * 1024
HEADER = 7


def frame(payloads: list[bytes]) -> bytes:
    """Write records as wandb does: file header, then chunks that never cross a block end."""
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for payload in payloads:
        first = True
        while True:
            left = BLOCK - len(out) % BLOCK
            if left < HEADER:
                out += bytes(left)
                continue
            room = left - HEADER
            chunk, payload = payload[:room], payload[room:]
            last = not payload
            if first:
                kind = 1 if last else 2  # FULL or FIRST
            else:
                kind = 4 if last else 3  # LAST or MIDDLE
            crc = zlib.crc32(chunk, zlib.crc32(bytes([kind])))
            out += struct.pack("<IHB", crc, len(chunk), kind) + chunk
            first = False
            if last:
                break
    return bytes(out)


def history(step: int, loss: float, **extra) -> bytes:
    record = pb.Record()
    values = {"train/global_step": step, "_step": step - 1, "train/loss": loss,
              "train/rewards/chosen": 0.1 * step, "train/rewards/rejected": -0.1 * step,
              "train/rewards/margins": 0.2 * step, "train/epoch": step / 100, **extra}
    for key, value in values.items():
        item = record.history.item.add()
        item.key = key
        item.value_json = json.dumps(value)
    return record.SerializeToString()


def config(**values) -> bytes:
    record = pb.Record()
    for key, value in values.items():
        item = record.config.update.add()
        item.key = key
        item.value_json = json.dumps(value)
    return record.SerializeToString()


def write(tmp_path: Path, payloads: list[bytes], name: str = "run-abcd1234.wandb") -> Path:
    path = tmp_path / name
    path.write_bytes(frame(payloads))
    return path


def test_history_rows_and_config(tmp_path):
    payloads = [config(beta=0.25, loss_type="ipo", _name_or_path="org/model")]
    payloads += [history(step, 1.0 - step / 100) for step in range(1, 41)]
    path = write(tmp_path, payloads)
    assert sniff_step_log(path) == "wandb-binary"
    run = read_step_log(path)
    assert run.table.height == 40
    assert run.table.get_column("step").to_list() == list(range(1, 41))
    assert run.table.get_column("loss").to_list() == pytest.approx(
        [1.0 - step / 100 for step in range(1, 41)])
    assert (run.meta.beta, run.meta.loss_type) == (0.25, "ipo")


def test_record_spanning_blocks(tmp_path):
    # A history row larger than two blocks is stored as FIRST, MIDDLE..., LAST chunks.
    big = "x" * (3 * BLOCK)
    payloads = [history(step, 0.5, **({"train/text": big} if step == 3 else {}))
                for step in range(1, 7)]
    run = read_step_log(write(tmp_path, payloads))
    assert run.table.get_column("step").to_list() == list(range(1, 7))
    assert any("non-numeric history keys not read: train/text" in note for note in run.notes)


def test_cut_file_keeps_complete_records(tmp_path):
    payloads = [history(step, 0.6) for step in range(1, 30)]
    data = frame(payloads)
    path = tmp_path / "run-cut.wandb"
    path.write_bytes(data[:-20])
    run = read_step_log(path)
    assert run.table.height == 28
    assert any("cut off where the file ends" in note for note in run.notes)


def test_corrupt_chunk_is_skipped(tmp_path):
    payloads = [history(step, 0.6) for step in range(1, 11)]
    data = bytearray(frame(payloads))
    data[HEADER + 12] ^= 0xFF  # inside the first record's data
    path = tmp_path / "run-corrupt.wandb"
    path.write_bytes(bytes(data))
    run = read_step_log(path)
    assert run.table.height == 9
    assert any("1 chunks failed their CRC-32 check" in note for note in run.notes)


def test_header_only_has_no_history(tmp_path):
    path = write(tmp_path, [])
    with pytest.raises(NoDataError, match=r"run-abcd1234\.wandb: no history rows"):
        read_step_log(path)


def test_unknown_header_version(tmp_path):
    path = tmp_path / "run-new.wandb"
    path.write_bytes(b":W&B" + struct.pack("<HB", 0xBEE1, 7) + bytes(32))
    with pytest.raises(InputError, match=r"unknown W&B file header \(magic 0xbee1, version 7\)"):
        read_step_log(path)
