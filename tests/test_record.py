"""Recorder: shards on disk, metadata, flush rules, crash behaviour and argument checks."""

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from synthetic import make_pairs, write_parquet

import dpodiag
from dpodiag.errors import InputError, OutputError, UsageError
from dpodiag.io import load_runs
from dpodiag.record import Recorder


def log_frame(recorder, frame):
    """Log a canonical pair table through `recorder`, one call per (step, split) batch."""
    for (step, split), batch in frame.group_by(["step", "split"], maintain_order=True):
        recorder.log(step=step, split=split, example_id=batch["example_id"].to_list(),
                     policy_chosen_logps=torch.tensor(batch["policy_chosen_logps"].to_numpy()),
                     policy_rejected_logps=torch.tensor(batch["policy_rejected_logps"].to_numpy()),
                     reference_chosen_logps=batch["reference_chosen_logps"].to_numpy(),
                     reference_rejected_logps=batch["reference_rejected_logps"].to_list(),
                     chosen_length=torch.tensor(batch["chosen_length"].to_numpy()).int(),
                     rejected_length=batch["rejected_length"].to_numpy(),
                     loss=torch.tensor(batch["loss"].to_numpy()))


def shard_names(folder):
    return sorted(path.name for path in Path(folder).iterdir())


def test_folder_reads_like_one_file(tmp_path):
    frame = make_pairs(steps=12, pairs=8, eval_every=4)
    single = write_parquet(frame, tmp_path / "single.parquet", beta=0.1, loss_type="sigmoid")
    with Recorder(tmp_path / "sharded", beta=0.1, loss_type="sigmoid", flush_rows=20) as recorder:
        log_frame(recorder, frame)

    (from_folder,) = dpodiag.load([tmp_path / "sharded"])
    (from_file,) = dpodiag.load([single])
    assert from_folder.name == "sharded"
    assert from_folder.source == str(tmp_path / "sharded")
    assert len(recorder.shards) > 1
    order = ["split", "step", "example_id"]
    columns = [c for c in from_file.table.columns if c != "run"]
    assert from_folder.table.select(columns).sort(order).equals(from_file.table.select(columns).sort(order))
    assert (from_folder.meta.beta, from_folder.meta.loss_type) == (0.1, "sigmoid")
    assert from_folder.meta.sources == from_file.meta.sources


def test_check_cli_reads_folder_as_one_run(tmp_path):
    with Recorder(tmp_path / "run", beta=0.1, loss_type="sigmoid", flush_rows=16) as recorder:
        log_frame(recorder, make_pairs(steps=30, pairs=16))
    result = subprocess.run([sys.executable, "-m", "dpodiag", "check", str(tmp_path / "run"),
                             "--format", "json"], capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)["runs"]
    assert (run["run"], run["rows"], run["beta_source"]) == ("run", 30 * 16, "metadata")


def test_shard_contents_and_metadata(tmp_path):
    recorder = Recorder(tmp_path, beta=0.2, loss_type="dpo", framework="loop",
                        policy_model="tiny", reference_model="tiny-sft",
                        extra_metadata={"trainer_config": {"lr": 1e-3}})
    recorder.log(step=3, policy_chosen_logps=[-1.0, -2.0], policy_rejected_logps=[-3.0, -4.0],
                 loss=0.5, epoch=0.25, split="eval")
    path = recorder.flush()

    assert path == tmp_path / "part-00000.parquet"
    metadata = json.loads(pq.read_schema(path).metadata[b"dpodiag"])
    assert metadata == {"beta": 0.2, "loss_type": "sigmoid", "framework": "loop", "policy_model": "tiny",
                        "reference_model": "tiny-sft", "trainer_config": {"lr": 1e-3}}
    table = pl.read_parquet(path)
    assert table.columns == ["step", "split", "epoch", "policy_chosen_logps", "policy_rejected_logps", "loss"]
    assert table["step"].to_list() == [3, 3]
    assert table["split"].to_list() == ["eval", "eval"]
    assert table["loss"].to_list() == [0.5, 0.5]
    assert table["epoch"].to_list() == [0.25, 0.25]
    assert table["policy_chosen_logps"].dtype == pl.Float64


def test_values_are_float64_copies(tmp_path):
    chosen = torch.tensor([-1.1, -2.2], dtype=torch.float32, requires_grad=True)
    rejected = np.array([-3.3, -4.4])
    with Recorder(tmp_path) as recorder:
        recorder.log(step=0, policy_chosen_logps=chosen * 1, policy_rejected_logps=rejected)
        rejected[0] = 0.0  # a later in-place change must not reach the buffer
    table = pl.read_parquet(tmp_path / "part-00000.parquet")
    assert table["policy_chosen_logps"].to_list() == chosen.detach().double().tolist()
    assert table["policy_rejected_logps"].to_list() == [-3.3, -4.4]


def test_nan_and_inf_are_recorded(tmp_path):
    with Recorder(tmp_path) as recorder:
        recorder.log(step=0, policy_chosen_logps=torch.tensor([float("nan"), -1.0]),
                     policy_rejected_logps=[float("-inf"), -2.0])
    table = pl.read_parquet(tmp_path / "part-00000.parquet")
    assert np.isnan(table["policy_chosen_logps"][0])
    assert table["policy_rejected_logps"][0] == float("-inf")


def test_omitted_optional_column_is_null(tmp_path):
    with Recorder(tmp_path) as recorder:
        recorder.log(step=0, policy_chosen_logps=[-1.0], policy_rejected_logps=[-2.0], loss=[0.7],
                     example_id=["a"])
        recorder.log(step=1, policy_chosen_logps=[-1.0], policy_rejected_logps=[-2.0])
    table = pl.read_parquet(tmp_path / "part-00000.parquet")
    assert table["loss"].to_list() == [0.7, None]
    assert table["example_id"].to_list() == ["a", None]


def test_flush_rows_bounds_the_buffer(tmp_path):
    recorder = Recorder(tmp_path, flush_rows=10)
    for step in range(7):
        recorder.log(step=step, policy_chosen_logps=[-1.0] * 4, policy_rejected_logps=[-2.0] * 4)
    recorder.close()
    # A shard is written as soon as the buffer reaches 10 rows: after steps 2, 5 and at close.
    assert shard_names(tmp_path) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.read_metadata(p).num_rows for p in recorder.shards] == [12, 12, 4]
    assert recorder.rows_written == 28


def test_flush_rows_one_writes_every_batch(tmp_path):
    recorder = Recorder(tmp_path, flush_rows=1)
    for step in range(3):
        recorder.log(step=step, policy_chosen_logps=[-1.0] * 4, policy_rejected_logps=[-2.0] * 4)
        assert len(shard_names(tmp_path)) == step + 1
    recorder.close()


def test_flush_seconds(tmp_path):
    recorder = Recorder(tmp_path, flush_seconds=0.05)
    recorder.log(step=0, policy_chosen_logps=[-1.0], policy_rejected_logps=[-2.0])
    assert shard_names(tmp_path) == []
    time.sleep(0.1)
    recorder.log(step=1, policy_chosen_logps=[-1.0], policy_rejected_logps=[-2.0])
    assert shard_names(tmp_path) == ["part-00000.parquet"]
    recorder.close()


def test_exception_in_with_block_flushes(tmp_path):
    with pytest.raises(RuntimeError), Recorder(tmp_path) as recorder:
        recorder.log(step=0, policy_chosen_logps=[-1.0], policy_rejected_logps=[-2.0])
        raise RuntimeError("training failed")
    assert recorder.closed
    assert pq.read_metadata(tmp_path / "part-00000.parquet").num_rows == 1


def run_script(body: str, folder: Path) -> subprocess.CompletedProcess:
    script = textwrap.dedent(f"""
        import os, signal, sys
        from dpodiag.record import Recorder
        recorder = Recorder({str(folder)!r}, beta=0.1, loss_type="sigmoid", flush_rows=8)
        for step in range(9):
            recorder.log(step=step, policy_chosen_logps=[-1.0] * 4, policy_rejected_logps=[-2.0] * 4)
    """) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120)


def test_killed_process_keeps_flushed_batches(tmp_path):
    result = run_script("os.kill(os.getpid(), signal.SIGKILL)\n", tmp_path / "run")
    assert result.returncode == -9
    # 9 batches of 4 rows with flush_rows=8: shards after batches 2, 4, 6 and 8; batch 9 is lost.
    assert shard_names(tmp_path / "run") == [f"part-{i:05d}.parquet" for i in range(4)]
    (run,) = load_runs(tmp_path / "run")
    assert run.table["step"].unique().sort().to_list() == list(range(8))


def test_exit_without_close_flushes_at_exit(tmp_path):
    result = run_script("sys.exit(0)\n", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    (run,) = load_runs(tmp_path / "run")
    assert run.table.height == 36


def test_existing_shards_need_append(tmp_path):
    with Recorder(tmp_path) as recorder:
        recorder.log(step=0, policy_chosen_logps=[-1.0], policy_rejected_logps=[-2.0])
    with pytest.raises(OutputError, match="append=True"):
        Recorder(tmp_path)
    with Recorder(tmp_path, append=True) as resumed:
        resumed.log(step=1, policy_chosen_logps=[-1.0], policy_rejected_logps=[-2.0])
    assert shard_names(tmp_path) == ["part-00000.parquet", "part-00001.parquet"]


def test_shards_with_different_metadata_are_rejected(tmp_path):
    with Recorder(tmp_path, beta=0.1) as recorder:
        recorder.log(step=0, policy_chosen_logps=[-1.0], policy_rejected_logps=[-2.0])
    with Recorder(tmp_path, beta=0.5, append=True) as recorder:
        recorder.log(step=1, policy_chosen_logps=[-1.0], policy_rejected_logps=[-2.0])
    with pytest.raises(InputError, match="part-00001.parquet: its 'dpodiag' metadata differs"):
        load_runs(tmp_path)


def test_rank_prefixes_form_one_run(tmp_path):
    for rank in range(2):
        with Recorder(tmp_path, shard_prefix=f"part-rank{rank}") as recorder:
            recorder.log(step=0, policy_chosen_logps=[-1.0, -1.5], policy_rejected_logps=[-2.0, -2.5])
    (run,) = load_runs(tmp_path)
    assert run.table.height == 4


@pytest.mark.parametrize("arguments, message", [
    ({"policy_rejected_logps": [-1.0]}, r"policy_rejected_logps has shape \(1,\), expected \(2,\)"),
    ({"policy_chosen_logps": [[-1.0, -2.0]]}, r"expected policy_chosen_logps to be 1-D"),
    ({"reference_chosen_logps": torch.zeros(2, 1)}, r"reference_chosen_logps has shape \(2, 1\)"),
    ({"reference_chosen_logps": ["a", "b"]}, r"expected reference_chosen_logps to hold real numbers"),
    ({"loss": torch.tensor([True, False])}, r"expected loss to hold real numbers"),
    ({"step": -1}, r"expected step to be an integer >= 0"),
    ({"step": 1.5}, r"expected step to be an integer >= 0"),
    ({"split": ""}, r"expected split to be a non-empty string"),
    ({"epoch": float("nan")}, r"expected epoch to be a finite number"),
    ({"example_id": ["a"]}, r"example_id has 1 ids, expected 2"),
    ({"example_id": "a"}, r"expected example_id to be a list of ids"),
])
def test_invalid_arguments(tmp_path, arguments, message):
    values = {"step": 0, "policy_chosen_logps": [-1.0, -2.0], "policy_rejected_logps": [-3.0, -4.0]}
    values.update(arguments)
    with Recorder(tmp_path) as recorder, pytest.raises(UsageError, match=message):
        recorder.log(**values)


def test_step_as_tensor(tmp_path):
    with Recorder(tmp_path) as recorder:
        recorder.log(step=torch.tensor(4), policy_chosen_logps=[-1.0], policy_rejected_logps=[-2.0])
    assert pl.read_parquet(tmp_path / "part-00000.parquet")["step"].to_list() == [4]


def test_column_added_after_first_call(tmp_path):
    with Recorder(tmp_path) as recorder:
        recorder.log(step=0, policy_chosen_logps=[-1.0], policy_rejected_logps=[-2.0])
        with pytest.raises(UsageError, match="loss was not given in the first call"):
            recorder.log(step=1, policy_chosen_logps=[-1.0], policy_rejected_logps=[-2.0], loss=[0.1])


def test_closed_recorder_rejects_rows(tmp_path):
    recorder = Recorder(tmp_path)
    recorder.close()
    recorder.close()
    with pytest.raises(UsageError, match="is closed"):
        recorder.log(step=0, policy_chosen_logps=[-1.0], policy_rejected_logps=[-2.0])
    assert shard_names(tmp_path) == []


@pytest.mark.parametrize("options, message", [
    ({"beta": -1.0}, "expected beta to be > 0"),
    ({"loss_type": "dpo-ish"}, "unknown loss_type"),
    ({"flush_rows": 0}, "expected flush_rows to be an integer >= 1"),
    ({"flush_seconds": 0}, "expected flush_seconds to be a number > 0"),
    ({"shard_prefix": "shard"}, "expected shard_prefix to start with 'part'"),
    ({"extra_metadata": {"beta": 1}}, "contains 'beta', which is an argument of Recorder"),
    ({"extra_metadata": {"trainer_config": [1]}}, "trainer_config'\\] to be a dict"),
    ({"extra_metadata": {"when": object()}}, "not JSON-serialisable"),
])
def test_invalid_options(tmp_path, options, message):
    with pytest.raises(UsageError, match=message):
        Recorder(tmp_path, **options)


def test_folder_that_is_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(OutputError, match="is a file"):
        Recorder(path)
