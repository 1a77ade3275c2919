"""An allocation failure ends a command with one line that suggests --streaming, not an internal error."""

import numpy as np
import pytest
import torch

from dpodiag.cli import main as cli_main
from dpodiag.cli.failures import is_out_of_memory
from synthetic import make_pairs, write_parquet


def _torch_allocation_error() -> RuntimeError:
    # A request far beyond any machine's memory fails at once in torch's CPU allocator.
    with pytest.raises(RuntimeError) as caught:
        torch.empty(1 << 62, dtype=torch.uint8)
    return caught.value


def _numpy_allocation_error() -> MemoryError:
    with pytest.raises(MemoryError) as caught:
        np.empty(1 << 62, dtype=np.uint8)
    return caught.value


def test_allocation_failures_are_recognised():
    assert is_out_of_memory(_torch_allocation_error())
    assert is_out_of_memory(_numpy_allocation_error())
    assert is_out_of_memory(MemoryError())


def test_other_errors_are_not_out_of_memory():
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("can't allocate memory"))


@pytest.mark.parametrize("arguments, advice", [([], "rerun with --streaming"),
                                               (["--streaming"], "even with --streaming")])
def test_check_out_of_memory_exits_two(tmp_path, monkeypatch, capsys, arguments, advice):
    log = write_parquet(make_pairs(), tmp_path / "run.parquet", beta=0.1, loss_type="sigmoid")

    def allocate_too_much(*args, **kwargs):
        raise _torch_allocation_error()

    monkeypatch.delenv("DPODIAG_DEBUG", raising=False)
    monkeypatch.setattr("dpodiag.pipeline.recompute", allocate_too_much)
    monkeypatch.setattr("dpodiag.pipeline.recompute_to_files", allocate_too_much)
    with pytest.raises(SystemExit) as exited:
        cli_main.main(["check", str(log), "--device", "cpu", *arguments])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("dpodiag: error: out of memory")
    assert advice in lines[0]
    assert "can't allocate memory" in lines[0]


@pytest.mark.parametrize(("panic_message", "status", "expected"), [
    # polars failing to start its threads for lack of memory: advice to stream.
    ("could not spawn threads: ThreadPoolBuildError", 2, "rerun with --streaming"),
    # Any other panic is a bug.
    ("index out of bounds", 3, "internal error: PanicException"),
])
def test_polars_panic_outcome(tmp_path, monkeypatch, capsys, panic_message, status, expected):
    import polars as pl

    log = write_parquet(make_pairs(), tmp_path / "run.parquet", beta=0.1, loss_type="sigmoid")

    def panic(*args, **kwargs):
        raise pl.exceptions.PanicException(panic_message)

    monkeypatch.delenv("DPODIAG_DEBUG", raising=False)
    monkeypatch.setattr("dpodiag.pipeline.recompute", panic)
    with pytest.raises(SystemExit) as exited:
        cli_main.main(["check", str(log), "--device", "cpu", "--in-memory"])
    assert exited.value.code == status
    assert expected in capsys.readouterr().err
