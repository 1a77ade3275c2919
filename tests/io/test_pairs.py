"""Reading pair logs: formats, other column names, metadata precedence and errors."""

import json

import polars as pl
import pytest

import dpodiag

from dpodiag.errors import InputError, UsageError
from dpodiag.io import load_runs
from dpodiag.schema import PAIR_ALIASES
from synthetic import SAMPLE_LOGS, make_pairs, write_parquet


@pytest.fixture
def frame():
    return make_pairs(steps=4, pairs=5)


@pytest.mark.parametrize("suffix", ["parquet", "csv", "jsonl"])
def test_formats_read_alike(tmp_path, frame, suffix):
    path = tmp_path / f"run.{suffix}"
    {"parquet": frame.write_parquet, "csv": frame.write_csv, "jsonl": frame.write_ndjson}[suffix](path)
    (run,) = load_runs(path)
    assert run.name == "run"
    assert run.level == "pairs"
    assert run.table.height == frame.height
    assert run.table["policy_chosen_logps"].to_list() == pytest.approx(frame["policy_chosen_logps"].to_list())
    assert run.table["example_id"].dtype == pl.Utf8


def test_other_column_names_are_mapped(tmp_path, frame):
    renamed = frame.rename({"policy_chosen_logps": "chosen_logps", "reference_chosen_logps": "ref_chosen_logps",
                            "policy_rejected_logps": "Logps_Rejected", "step": "global_step", "example_id": "id"})
    path = tmp_path / "renamed.csv"
    renamed.write_csv(path)
    (run,) = load_runs(path)
    assert run.column_mapping["policy_chosen_logps"] == "chosen_logps"
    assert run.column_mapping["policy_rejected_logps"] == "Logps_Rejected"
    assert run.column_mapping["reference_chosen_logps"] == "ref_chosen_logps"
    assert run.column_mapping["step"] == "global_step"


def test_column_override(tmp_path, frame):
    path = tmp_path / "odd.csv"
    frame.rename({"policy_chosen_logps": "pc"}).write_csv(path)
    (run,) = load_runs(path, column_map={"policy_chosen_logps": "pc"})
    assert run.column_mapping["policy_chosen_logps"] == "pc"


def test_column_override_spares_other_inputs(tmp_path, frame):
    # One --column for two inputs: the file with its own canonical column is read as it is.
    odd, plain = tmp_path / "odd.csv", tmp_path / "plain.csv"
    frame.rename({"policy_chosen_logps": "pc"}).write_csv(odd)
    frame.rename({"policy_chosen_logps": "chosen_logps"}).write_csv(plain)
    runs = [run for path in (odd, plain) for run in load_runs(path, column_map={"policy_chosen_logps": "pc"})]
    assert [run.column_mapping["policy_chosen_logps"] for run in runs] == ["pc", "chosen_logps"]


def test_column_override_typo_is_an_error(tmp_path, frame):
    # The file has its own loss column, but no input has the column that --column names.
    path = tmp_path / "plain.csv"
    frame.write_csv(path)
    with pytest.raises(InputError, match=r"plain\.csv: column 'pair_loss' given for loss is not in the file"):
        dpodiag.load(path, column_map={"loss": "pair_loss"})
    with pytest.raises(UsageError, match=r"--column loss=pair_loss: none of the 2 inputs has a column"):
        dpodiag.load([path, path], column_map={"loss": "pair_loss"})


def test_column_override_typo_in_folder(tmp_path, frame):
    frame.write_csv(tmp_path / "plain.csv")
    with pytest.raises(InputError, match=r"column 'pair_loss' given for loss is in none of the folder's logs"):
        dpodiag.load(tmp_path, column_map={"loss": "pair_loss"})


def test_column_override_skips_step_metrics(tmp_path, frame):
    # A step-log metric mapped for the step logs of the same command does not apply here.
    path = tmp_path / "plain.csv"
    frame.write_csv(path)
    (run,) = load_runs(path, column_map={"grad_norm": "gn"})
    assert "grad_norm" not in run.column_mapping


def test_column_override_missing_everywhere(tmp_path, frame):
    path = tmp_path / "plain.csv"
    frame.drop("loss").write_csv(path)
    with pytest.raises(InputError, match=r"plain\.csv: column 'pair_loss' given for loss is not in the file"):
        load_runs(path, column_map={"loss": "pair_loss"})


def test_logratio_form(tmp_path):
    path = tmp_path / "ratios.jsonl"
    pl.DataFrame({"step": [0, 1], "chosen_logratio": [0.0, 1.5],
                  "rejected_logratio": [0.0, -0.5]}).write_ndjson(path)
    (run,) = load_runs(path)
    assert run.table.columns == ["step", "chosen_logratio", "rejected_logratio", "split", "run"]


def test_metadata_precedence(tmp_path, frame):
    path = write_parquet(frame, tmp_path / "meta.parquet", beta=0.1, loss_type="sigmoid", label_smoothing=0.1)
    (run,) = load_runs(path)
    assert (run.meta.beta, run.meta.source_of("beta")) == (0.1, "metadata")
    (tmp_path / "meta.dpodiag.json").write_text(json.dumps({"beta": 0.2, "loss_type": "ipo"}))
    (run,) = load_runs(path)
    assert (run.meta.beta, run.meta.source_of("beta")) == (0.2, "sidecar")
    assert run.meta.loss_type == "ipo"
    (run,) = load_runs(path, flags={"beta": 0.3})
    assert (run.meta.beta, run.meta.source_of("beta")) == (0.3, "flag")
    assert run.meta.label_smoothing == 0.1


def test_several_runs_in_one_file(tmp_path, frame):
    both = pl.concat([frame.with_columns(run=pl.lit("a")), frame.with_columns(run=pl.lit("b"))])
    path = tmp_path / "both.parquet"
    both.write_parquet(path)
    runs = load_runs(path)
    assert [r.name for r in runs] == ["a", "b"]
    assert all(r.table.height == frame.height for r in runs)


def test_validation_split_becomes_eval(tmp_path, frame):
    path = tmp_path / "splits.parquet"
    frame.with_columns(split=pl.lit("validation")).write_parquet(path)
    (run,) = load_runs(path)
    assert run.splits == ["eval"]


def test_missing_column_names_file_and_column(tmp_path, frame):
    path = tmp_path / "missing.csv"
    frame.drop("policy_rejected_logps").write_csv(path)
    with pytest.raises(InputError, match=r"missing\.csv: missing column 'policy_rejected_logps'.*--column"):
        load_runs(path)


@pytest.mark.parametrize("typo, missing", [
    ("refrence_rejected_logps", "reference_rejected_logps"),
    ("policy_rejectd_logps", "policy_rejected_logps"),
    ("rejected_lenght", "rejected_length"),
])
def test_misspelled_partner_column_is_named(tmp_path, frame, typo, missing):
    path = tmp_path / "typo.csv"
    frame.rename({missing: typo}).write_csv(path)
    with pytest.raises(InputError, match=rf"typo\.csv: missing column '{missing}', while .* is present; "
                                         rf"map it with --column {missing}={typo}"):
        load_runs(path)
    (run,) = load_runs(path, column_map={missing: typo})
    assert missing in run.columns


def test_lone_partner_column_without_close_name(tmp_path, frame):
    path = tmp_path / "lone.parquet"
    frame.drop("reference_rejected_logps").write_parquet(path)
    with pytest.raises(InputError, match="missing column 'reference_rejected_logps'.*remove 'reference_chosen_logps'"):
        load_runs(path)


def test_missing_step(tmp_path, frame):
    path = tmp_path / "nostep.csv"
    frame.drop("step").write_csv(path)
    with pytest.raises(InputError, match="missing column 'step'"):
        load_runs(path)


def test_text_in_number_column_names_row(tmp_path, frame):
    path = tmp_path / "bad.csv"
    frame.with_columns(pl.col("loss").cast(pl.Utf8)).with_columns(
        pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("oops")).otherwise(pl.col("loss")).alias("loss")
    ).write_csv(path)
    with pytest.raises(InputError, match=r"bad\.csv: column 'loss', row 4: expected a number, got 'oops'"):
        load_runs(path)


def test_invalid_metadata_value(tmp_path, frame):
    path = write_parquet(frame, tmp_path / "badmeta.parquet", beta=-1)
    with pytest.raises(InputError, match="expected beta to be > 0"):
        load_runs(path)


def test_unknown_loss_type_flag(tmp_path, frame):
    path = tmp_path / "ok.parquet"
    frame.write_parquet(path)
    with pytest.raises(UsageError, match="unknown loss_type 'sigmod'"):
        load_runs(path, flags={"loss_type": "sigmod"})


def test_empty_table(tmp_path, frame):
    path = tmp_path / "empty.parquet"
    frame.head(0).write_parquet(path)
    with pytest.raises(InputError, match="no rows"):
        load_runs(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_runs(tmp_path / "absent.parquet")


def test_formats_doc_is_current():
    from pathlib import Path

    from dpodiag.io.catalogue import formats_markdown

    page = Path(__file__).resolve().parents[2] / "docs" / "formats.md"
    assert page.read_text() == formats_markdown(), (
        "docs/formats.md is stale: run python -m dpodiag.io.catalogue > docs/formats.md")


def test_dialect_on_pair_log_is_noted():
    (run,) = load_runs(SAMPLE_LOGS / "healthy.parquet", dialect="trl")
    assert run.level == "pairs"
    assert any("--dialect trl was not applied" in note for note in run.notes)


@pytest.mark.parametrize("name", ["pairs.txt", "pairs.log"])
def test_jsonl_pairs_under_text_name_rejected(tmp_path, name):
    path = tmp_path / name
    make_pairs(steps=3).write_ndjson(path)
    with pytest.raises(InputError, match=rf"{name}: contains per-pair records as JSON Lines .*; "
                                         r"rename it to \.jsonl"):
        load_runs(path)


def test_json_array_of_pairs_rejected(tmp_path):
    path = tmp_path / "pairs.json"
    make_pairs(steps=3).write_json(path)
    with pytest.raises(InputError, match=r"pairs\.json: contains per-pair records as a JSON array"):
        load_runs(path)


def test_same_file_twice_is_renamed_with_note():
    first, second = dpodiag.load([SAMPLE_LOGS / "healthy.parquet"] * 2)
    assert (first.name, second.name) == ("healthy", "healthy-2")
    assert second.table.get_column("run").unique().to_list() == ["healthy-2"]
    assert any("the same file was passed twice" in note for note in second.notes)
    assert not any("renamed" in note for note in first.notes)


def test_every_chosen_alias_has_a_rejected_twin():
    for canonical, aliases in PAIR_ALIASES.items():
        if "chosen" in canonical:
            twin = canonical.replace("chosen", "rejected")
            assert sorted(a.replace("chosen", "rejected") for a in aliases) == sorted(PAIR_ALIASES[twin])
