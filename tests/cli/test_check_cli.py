"""`dpodiag check` as a user runs it: a subprocess, its output and its exit status."""

import json
import subprocess
import sys

import polars as pl
import pytest

from synthetic import make_pairs, write_parquet


def dpodiag(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dpodiag", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("logs")
    healthy = write_parquet(make_pairs(eval_every=5), folder / "healthy.parquet", beta=0.1, loss_type="sigmoid")
    broken = write_parquet(make_pairs(loss_beta=0.5), folder / "broken.parquet", beta=0.1, loss_type="sigmoid")
    return healthy, broken


def test_exit_zero_on_healthy_run(logs):
    result = dpodiag("check", logs[0])
    assert result.returncode == 0, result.stderr
    assert "no error or warning" in result.stdout


def test_exit_one_on_error(logs):
    result = dpodiag("check", logs[1])
    assert result.returncode == 1
    assert "ERROR   beta-mismatch" in result.stdout
    assert "Fix: Pass the configured beta to the loss, or correct the recorded beta." in result.stdout


def test_fail_on_never(logs):
    assert dpodiag("check", logs[1], "--fail-on", "never").returncode == 0


def test_json_document(logs):
    result = dpodiag("check", *logs, "--format", "json")
    document = json.loads(result.stdout)
    assert set(document) == {"dpodiag_version", "runs", "findings"}
    first = document["runs"][0]
    assert set(first) == {"run", "source", "level", "rows", "splits", "first_step", "last_step",
                          "beta", "beta_source", "loss_type", "loss_type_source", "notes"}
    assert (first["run"], first["level"], first["beta_source"]) == ("healthy", "pairs", "metadata")
    assert first["splits"] == ["train", "eval"]
    errors = [f for f in document["findings"] if f["severity"] == "error"]
    assert [(f["code"], f["run"]) for f in errors] == [("beta-mismatch", "broken")]
    assert set(errors[0]) == {"code", "severity", "run", "split", "step", "title", "message", "evidence"}


def test_markdown_summary(logs):
    result = dpodiag("check", *logs, "--format", "markdown")
    assert result.stdout.startswith("## dpodiag check")
    assert "| error | `beta-mismatch` | broken |" in result.stdout
    assert "| Pass the configured beta to the loss, or correct the recorded beta. |" in result.stdout


def test_flags_override_metadata(logs):
    document = json.loads(dpodiag("check", logs[1], "--beta", "0.5", "--format", "json").stdout)
    assert document["runs"][0]["beta_source"] == "flag"
    assert not [f for f in document["findings"] if f["severity"] == "error"]


@pytest.mark.parametrize("args,message", [
    (["missing.parquet"], "missing.parquet: no such file or folder"),
    (["{bad}", "--beta", "-1"], "dpodiag: error: --beta: expected beta to be > 0, got -1.0"),
    (["{bad}", "--label-smoothing", "0.7"], "--label-smoothing: expected label_smoothing to be in [0, 0.5)"),
    (["{bad}", "--column", "nonsense"], "expected --column CANONICAL=THEIRS"),
    (["{bad}", "--device", "tpu"], "Invalid value for '--device'"),
    (["{bad}", "--streaming", "--in-memory"], "--streaming and --in-memory exclude each other"),
])
def test_invalid_input_exits_two_with_one_line(tmp_path, logs, args, message):
    args = [a.replace("{bad}", str(logs[0])) for a in args]
    result = dpodiag("check", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_column_error_names_file_and_column(tmp_path):
    path = tmp_path / "nolog.csv"
    pl.DataFrame({"step": [0], "policy_chosen_logps": [-1.0]}).write_csv(path)
    result = dpodiag("check", path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"dpodiag: error: {path}: missing column 'policy_rejected_logps', while 'policy_chosen_logps' "
        "is present; add it or map it with --column policy_rejected_logps=NAME"]


def test_pair_and_step_logs_in_one_check(logs):
    from pathlib import Path
    step_log = (Path(__file__).resolve().parent.parent / "fixtures" / "real_logs"
                / "translation-dpo-gams9b-nograd-stuck.wandb_output.log")
    document = json.loads(dpodiag("check", logs[0], step_log, "--format", "json").stdout)
    assert [(r["run"], r["level"]) for r in document["runs"]] == [
        ("healthy", "pairs"), ("translation-dpo-gams9b-nograd-stuck", "steps")]
    assert ("no-learning-signal", "translation-dpo-gams9b-nograd-stuck") in {
        (f["code"], f["run"]) for f in document["findings"]}


def test_label_smoothing_out_of_range(logs):
    result = dpodiag("check", logs[0], "--loss-type", "cdpo", "--label-smoothing", "-1")
    assert result.returncode == 2
    assert "expected label_smoothing to be in [0, 0.5), got -1.0" in result.stderr


def test_report_refuses_to_overwrite_its_input(tmp_path, logs):
    import shutil
    copy = shutil.copy(logs[0], tmp_path / "run.parquet")
    before = (tmp_path / "run.parquet").read_bytes()
    result = dpodiag("report", copy, "-o", copy, "--force")
    assert result.returncode == 2
    assert "is one of the inputs" in result.stderr
    assert (tmp_path / "run.parquet").read_bytes() == before


def test_convert_needs_a_parquet_name(tmp_path, logs):
    result = dpodiag("convert", logs[0], "-o", tmp_path / "out.csv")
    assert result.returncode == 2
    assert "give the output a .parquet name" in result.stderr


def test_step_log_without_preference_metrics(tmp_path):
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps({"log_history": [
        {"loss": 2.3 - 0.01 * i, "grad_norm": 1.0, "learning_rate": 1e-5, "epoch": i / 100, "step": i}
        for i in range(1, 50)]}))
    result = dpodiag("check", path)
    assert "WARNING too-little-data: The log has no preference metrics" in result.stdout


def test_first_record_without_loss(tmp_path):
    rows = ["_step,train/loss,train/rewards/chosen,train/rewards/rejected,train/rewards/margins,"
            "train/rewards/accuracies,train/logps/chosen,train/logps/rejected"]
    for step in range(1, 12):
        chosen, margin = -0.01 * (step - 1), 0.05 * (step - 1)
        loss = "" if step == 1 else f"{0.69 - 0.01 * step:.4f}"
        rows.append(f"{step},{loss},{chosen},{chosen - margin},{margin},0.6,{-40 + chosen * 10},"
                    f"{-55 + (chosen - margin) * 10}")
    path = tmp_path / "wandb_history.csv"
    path.write_text("\n".join(rows) + "\n")
    result = dpodiag("check", path, "--loss-type", "sigmoid", "--beta", "0.1")
    assert result.returncode in (0, 1), result.stderr
    assert "internal error" not in result.stderr
