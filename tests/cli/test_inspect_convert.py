"""`dpodiag inspect` and `dpodiag convert` as a user runs them."""

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from synthetic import SAMPLE_LOGS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "real_logs"
OVEROPT = FIXTURES / "translation-dpo-gams9b-lr4e-6-overopt.wandb_output.log"


def dpodiag(*args):
    return subprocess.run([sys.executable, "-m", "dpodiag", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def test_inspect_step_log_text():
    result = dpodiag("inspect", OVEROPT)
    assert result.returncode == 0, result.stderr
    assert "format:   console (steps log)" in result.stdout
    assert "dialect:  trl" in result.stdout
    assert "train: 454 rows at 454 steps" in result.stdout
    assert "beta: 0.1 (trainer-config)" in result.stdout


def test_inspect_json_fields():
    (described,) = json.loads(dpodiag("inspect", SAMPLE_LOGS / "healthy.parquet", "--format", "json").stdout)
    assert described["format"] == "parquet"
    assert described["level"] == "pairs"
    assert described["splits"] == {"eval": {"rows": 576, "steps": 9}, "train": {"rows": 1280, "steps": 80}}
    assert described["metadata"]["beta"] == {"value": 0.1, "source": "metadata"}


def findings(path):
    document = json.loads(dpodiag("check", path, "--format", "json", "--fail-on", "never").stdout)
    return sorted((f["code"], f["severity"]) for f in document["findings"] if f["code"] != "checks-skipped")


def test_convert_step_log_keeps_findings(tmp_path):
    out = tmp_path / "overopt.parquet"
    result = dpodiag("convert", OVEROPT, "-o", out)
    assert result.returncode == 0, result.stderr
    assert findings(out) == findings(OVEROPT)
    assert "1 run(s), 463 step records" in result.stdout
    table = pl.read_parquet(out)
    assert table.height == 463
    assert {"run", "split", "step", "loss", "rewards_margins"} <= set(table.columns)


def test_convert_writes_only_stated_metadata(tmp_path):
    # A trainer_state.json states no label smoothing: RunMeta's default 0.0 is not written.
    source = FIXTURES.parent / "trl_runs" / "dpo-sigmoid.trainer_state.json"
    out = tmp_path / "dpo-sigmoid.parquet"
    assert dpodiag("convert", source, "-o", out).returncode == 0
    stored = json.loads(pq.read_schema(out).metadata[b"dpodiag"])
    assert stored["logps_normalisation"] == "sum"
    assert "label_smoothing" not in stored


def test_convert_pair_log_round_trip(tmp_path):
    out = tmp_path / "healthy.parquet"
    assert dpodiag("convert", SAMPLE_LOGS / "beta-mismatch.parquet", "-o", out).returncode == 0
    assert findings(out) == findings(SAMPLE_LOGS / "beta-mismatch.parquet")


def test_convert_refuses_to_overwrite(tmp_path):
    out = tmp_path / "exists.parquet"
    out.write_bytes(b"keep me")
    result = dpodiag("convert", SAMPLE_LOGS / "healthy.parquet", "-o", out)
    assert result.returncode == 2
    assert "file exists; pass --force" in result.stderr
    assert out.read_bytes() == b"keep me"


def test_convert_folder_keeps_each_runs_metadata(tmp_path):
    import shutil

    import dpodiag as api

    folder = tmp_path / "runs"
    folder.mkdir()
    for name in ("healthy", "simpo-reference-free"):
        shutil.copy(SAMPLE_LOGS / f"{name}.parquet", folder)
    result = dpodiag("convert", folder, "-o", tmp_path / "both.parquet")
    assert result.returncode == 0, result.stderr
    runs = {run.name: run for run in api.load(tmp_path / "both.parquet")}
    assert (runs["healthy"].meta.beta, runs["healthy"].meta.loss_type) == (0.1, "sigmoid")
    assert (runs["simpo-reference-free"].meta.beta, runs["simpo-reference-free"].meta.loss_type) == (2.0, "simpo")
    # The SimPO run has no reference columns; stacking must not give it null ones.
    assert "reference_chosen_logps" not in runs["simpo-reference-free"].table.columns
    converted = api.diagnose(list(runs.values()), device="cpu")
    separate = api.diagnose(api.load(sorted(folder.iterdir())), device="cpu")
    assert sorted((f.run, f.code) for f in converted.findings) == sorted((f.run, f.code) for f in separate.findings)
