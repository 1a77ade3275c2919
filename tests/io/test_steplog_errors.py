"""Error paths of the step-log readers: one-line messages that name the file, place and fix."""

from __future__ import annotations

import json
import sys

import pytest

from dpodiag.errors import InputError, NoDataError, UsageError
from dpodiag.io.steplogs import read_step_log, sniff_step_log

WANDB_CONFIG = """\
_wandb:
    value:
        cli_version: 0.19.7
beta:
    value: 0.1
loss_type:
    value: sigmoid
"""
TRAIN_DICT = ("{'loss': 0.6931, 'learning_rate': 1e-06, 'rewards/chosen': 0.0, "
              "'rewards/rejected': 0.0, 'rewards/accuracies': 0.0, 'rewards/margins': 0.0, "
              "'epoch': 0.01}\n")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.log"
    path.write_text("")
    assert sniff_step_log(path) is None
    with pytest.raises(NoDataError, match=r"empty\.log: the file is empty; pass a step log"):
        read_step_log(path)


def test_blank_file(tmp_path):
    path = tmp_path / "blank.json"
    path.write_text("\n  \n")
    with pytest.raises(NoDataError, match=r"blank\.json: the file is empty"):
        read_step_log(path)


def test_console_log_without_metrics(tmp_path):
    path = tmp_path / "train.out"
    path.write_text("Loading checkpoint shards: 100%\nUpdated tokens: {'eos_token_id': 2}\ndone\n")
    with pytest.raises(NoDataError, match=r"train\.out: lines 1-3: no metrics found in this "
                                          r"console log; pass a file that contains the printed "
                                          r"training dicts"):
        read_step_log(path)


def test_wandb_config_alone(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    path = files / "config.yaml"
    path.write_text(WANDB_CONFIG)
    assert sniff_step_log(path) == "wandb-config"
    with pytest.raises(InputError, match=r"config\.yaml: is a W&B run config \(config\.yaml\), "
                                         r"not a training log; pass the log beside it"):
        read_step_log(path)


def test_wandb_config_names_log_beside(tmp_path):
    (tmp_path / "config.yaml").write_text(WANDB_CONFIG)
    (tmp_path / "output.log").write_text(TRAIN_DICT)
    with pytest.raises(InputError, match=r"pass the log beside it \(.*output\.log"):
        read_step_log(tmp_path / "config.yaml")


def test_trainer_config_alone(tmp_path):
    path = tmp_path / "training_args.yaml"
    path.write_text("stage: dpo\npref_beta: 0.1\npref_loss: sigmoid\n")
    with pytest.raises(InputError, match=r"training_args\.yaml: is a trainer config, not a "
                                         r"training log; pass the log in the same folder"):
        read_step_log(path)


def test_pickle_is_never_loaded(tmp_path):
    path = tmp_path / "training_args.bin"
    path.write_bytes(b"\x80\x04\x95 not loaded")
    with pytest.raises(InputError, match=r"training_args\.bin: is a pickle .*never unpickles"):
        read_step_log(path)


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "trainer_state.json"
    path.write_text('{\n  "log_history": [\n    {"loss": 0.69,, "step": 1}\n  ]\n}\n')
    with pytest.raises(InputError, match=r"trainer_state\.json: line 3: invalid JSON"):
        read_step_log(path)


def test_empty_log_history(tmp_path):
    path = tmp_path / "trainer_state.json"
    path.write_text(json.dumps({"log_history": [], "global_step": 0}))
    with pytest.raises(NoDataError, match=r"trainer_state\.json: the log_history list is empty; "
                                          r"pass a state saved after the first logging step"):
        read_step_log(path)


def test_records_without_metrics(tmp_path):
    path = tmp_path / "history.json"
    path.write_text(json.dumps([{"step": 1, "note": "start"}, {"step": 2}]))
    with pytest.raises(NoDataError, match=r"history\.json: no metric values in its 2 records"):
        read_step_log(path)


def test_unsupported_binary(tmp_path):
    path = tmp_path / "weights.dat"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match=r"weights\.dat: not a supported step log format; pass"):
        read_step_log(path)


def test_folder_without_logs(tmp_path):
    (tmp_path / "README.txt").write_text("nothing here\n")
    with pytest.raises(NoDataError, match=r"no step log found in this folder; pass"):
        read_step_log(tmp_path)


def test_unknown_dialect(tmp_path):
    path = tmp_path / "output.log"
    path.write_text(TRAIN_DICT)
    with pytest.raises(UsageError, match=r"unknown dialect 'trl-9'; use one of: trl-legacy, trl,"):
        read_step_log(path, dialect="trl-9")


def test_column_map_unknown_canonical(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,train_loss\n0,0.69\n")
    with pytest.raises(UsageError, match=r"column map: unknown canonical name 'margin'"):
        read_step_log(path, column_map={"margin": "train_loss"})


def test_column_map_unknown_column(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("step,train_loss\n0,0.69\n")
    with pytest.raises(UsageError, match=r"column map: 'gap' is not a key of .*metrics\.csv"):
        read_step_log(path, column_map={"rewards_margins": "gap"})


def test_column_map_skips_pair_columns(tmp_path):
    # A pair-log column mapped for the pair logs of the same command does not apply here.
    path = tmp_path / "metrics.csv"
    path.write_text("step,train_loss\n0,0.69\n")
    run = read_step_log(path, column_map={"reference_chosen_logps": "ref_chosen", "loss": "train_loss"})
    assert run.column_mapping["loss"] == "train_loss"


def test_tensorboard_without_package(tmp_path, monkeypatch):
    path = tmp_path / "events.out.tfevents.1.host"
    payload = b"\x00" * 8 + b"brain.Event:2"
    path.write_bytes(len(payload).to_bytes(8, "little") + b"\x00" * 4 + payload + b"\x00" * 4)
    monkeypatch.setitem(sys.modules, "tensorboard.backend.event_processing", None)
    assert sniff_step_log(path) == "tensorboard"
    with pytest.raises(InputError, match=r"is a TensorBoard event file, and reading it needs the "
                                         r"optional tensorboard package; install it with"):
        read_step_log(path)


def test_broken_dict_is_noted_not_raised(tmp_path):
    path = tmp_path / "train.log"
    path.write_text(TRAIN_DICT + "{'loss': 0.5, 'learning_rate': oops}\n" + TRAIN_DICT)
    run = read_step_log(path)
    assert run.table.height == 2
    assert any("could not be parsed" in note and "line 2" in note for note in run.notes)


def test_cut_jsonl_last_line(tmp_path):
    path = tmp_path / "trainer_log.jsonl"
    path.write_text('{"current_steps": 10, "loss": 0.7, "accuracy": 0.5}\n'
                    '{"current_steps": 20, "loss": 0.6, "accu')
    run = read_step_log(path)
    assert run.table.get_column("step").to_list() == [10]
    assert any("line 2: the last record is cut off" in note for note in run.notes)
