"""A corpus of bad, odd and partial inputs, each with the outcome `dpodiag` must give.

Each case writes small files into a folder and names the command line to run there. The
expected outcome is one of:

- "error": exit status 2 and one line on stderr, `dpodiag: error: FILE: what is wrong (where);
  what to do`, with no traceback;
- "read": the input is read, and `check -v` (or `report`) prints the note or finding that says
  what was repaired, dropped or found.

`message` is the expected stderr line without its `dpodiag: error: ` prefix (for "error"), or a
line expected in stdout (for "read"). Its `…` matches any text: parts of a message that a library
writes, or numbers that depend on the platform.

Run as a script to write the corpus into a folder, or to print the table of docs/robustness.md:

    python tests/robustness/make_corpus.py --write FOLDER
    python tests/robustness/make_corpus.py --table
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl

ERROR = "error"
READ = "read"
WILDCARD = "…"


@dataclass(frozen=True)
class Case:
    """One corpus input, the command run on it and the outcome expected."""

    name: str
    description: str
    build: Callable[[Path], None]
    """Writes the case's files into an empty folder."""
    args: tuple[str, ...]
    """The command line after `dpodiag`, run in the case's folder."""
    outcome: str
    message: str
    exit_status: int | None = None
    """The exit status of a "read" case; 0 unless a finding reaches --fail-on."""
    other_user: bool = False
    """Run the command as another user than root: root reads a file of mode 000."""

    @property
    def expected_status(self) -> int:
        if self.outcome == ERROR:
            return 2
        return 0 if self.exit_status is None else self.exit_status


def message_pattern(message: str) -> re.Pattern[str]:
    """Compile an expected message into a regular expression where `…` matches any text."""
    parts = [re.escape(part) for part in message.split(WILDCARD)]
    return re.compile("^" + ".*?".join(parts) + "$")


# Valid inputs that the bad ones are derived from

def pair_frame(steps: int = 6, pairs: int = 8, seed: int = 0) -> pl.DataFrame:
    """A small valid pair log: the policy starts at the reference and separates the pairs."""
    rng = np.random.default_rng(seed)
    chosen_ref = rng.normal(-40.0, 4.0, pairs)
    rejected_ref = rng.normal(-45.0, 4.0, pairs)
    frames = []
    for step in range(steps):
        chosen = chosen_ref + 0.1 * step + (rng.normal(0, 0.05, pairs) if step else 0.0)
        rejected = rejected_ref - 0.4 * step + (rng.normal(0, 0.05, pairs) if step else 0.0)
        margin = 0.1 * ((chosen - chosen_ref) - (rejected - rejected_ref))
        frames.append(pl.DataFrame({
            "step": [step] * pairs,
            "example_id": [f"pair-{i}" for i in range(pairs)],
            "policy_chosen_logps": chosen, "policy_rejected_logps": rejected,
            "reference_chosen_logps": chosen_ref, "reference_rejected_logps": rejected_ref,
            "loss": np.logaddexp(0.0, -margin),
        }))
    return pl.concat(frames)


def log_records(steps: int = 10, start: int = 1) -> list[dict[str, float]]:
    """TRL DPO log records, one per optimizer step, as log_history holds them."""
    records = []
    for step in range(start, start + steps):
        margin = 0.05 * step
        records.append({
            "loss": round(math.log1p(math.exp(-margin)), 4), "grad_norm": 2.0,
            "learning_rate": 5e-7, "rewards/chosen": 0.01 * step,
            "rewards/rejected": 0.01 * step - margin, "rewards/margins": margin,
            "rewards/accuracies": min(1.0, 0.5 + 0.04 * step), "logps/chosen": -120.0 - 0.1 * step,
            "logps/rejected": -130.0 - 0.5 * step, "epoch": round(step / 100, 4), "step": step,
        })
    return records


def trainer_state(records: list[dict[str, float]]) -> str:
    """The text of an HF trainer_state.json with `records` as its log_history."""
    state = {"best_metric": None, "epoch": records[-1]["epoch"],
             "global_step": records[-1]["step"], "log_history": records, "logging_steps": 1,
             "max_steps": 100, "train_batch_size": 8}
    return json.dumps(state, indent=2)


def console_text(records: list[dict[str, float]]) -> str:
    """A console capture: a banner, then the printed log dicts without their step key."""
    lines = ["Loading checkpoint shards: 100%|##########| 2/2", "Beta: 0.1"]
    for record in records:
        printed = {key: value for key, value in record.items() if key != "step"}
        lines.append(repr(printed))
    return "\n".join(lines) + "\n"


def jsonl_text(records: list[dict[str, float]]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def write(folder: Path, name: str, data: str | bytes) -> None:
    path = folder / name
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)


def write_pairs(folder: Path, name: str, frame: pl.DataFrame) -> None:
    path = folder / name
    if name.endswith(".parquet"):
        frame.write_parquet(path)
    elif name.endswith(".csv"):
        frame.write_csv(path)
    else:
        frame.write_ndjson(path)


def pairs_csv(frame: pl.DataFrame | None = None) -> str:
    return (pair_frame() if frame is None else frame).write_csv()


def pairs_jsonl(frame: pl.DataFrame | None = None) -> str:
    return (pair_frame() if frame is None else frame).write_ndjson()


def cut_at_last_line(text: str, keep: float = 0.5) -> str:
    """Cut `text` inside its last line, as a writer that crashed mid-line leaves it."""
    body = text.rstrip("\n")
    start = body.rfind("\n") + 1
    return body[:start + int((len(body) - start) * keep)]


# Builders, one per case

def build_empty_csv(folder: Path) -> None:
    write(folder, "pairs.csv", "")


def build_empty_parquet(folder: Path) -> None:
    write(folder, "pairs.parquet", b"")


def build_empty_log(folder: Path) -> None:
    write(folder, "train.log", "")


def build_header_only(folder: Path) -> None:
    write(folder, "pairs.csv", pairs_csv().splitlines()[0] + "\n")


def build_truncated_parquet(folder: Path) -> None:
    path = folder / "pairs.parquet"
    pair_frame(steps=20).write_parquet(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def build_cut_pair_jsonl(folder: Path) -> None:
    write(folder, "pairs.jsonl", cut_at_last_line(pairs_jsonl()))


def build_cut_pair_csv(folder: Path) -> None:
    write(folder, "pairs.csv", cut_at_last_line(pairs_csv(), keep=0.5))


def build_cut_step_jsonl(folder: Path) -> None:
    write(folder, "trainer_log.jsonl", cut_at_last_line(jsonl_text(log_records())))


def build_cut_console(folder: Path) -> None:
    write(folder, "train.log", cut_at_last_line(console_text(log_records())))


def build_cut_trainer_state(folder: Path) -> None:
    text = trainer_state(log_records(12))
    write(folder, "trainer_state.json", text[: text.index('"step": 10') + 4])


def build_text_in_logps(folder: Path) -> None:
    frame = pair_frame().with_columns(pl.col("policy_chosen_logps").cast(pl.Utf8))
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(pl.lit("n/a"))
                               .otherwise(pl.col("policy_chosen_logps"))
                               .alias("policy_chosen_logps"))
    write(folder, "pairs.csv", frame.write_csv())


def build_text_in_parquet(folder: Path) -> None:
    frame = pair_frame().with_columns(pl.col("policy_rejected_logps").cast(pl.Utf8))
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 4).then(pl.lit("-12,5"))
                               .otherwise(pl.col("policy_rejected_logps"))
                               .alias("policy_rejected_logps"))
    frame.write_parquet(folder / "pairs.parquet")


def build_missing_column(folder: Path) -> None:
    write(folder, "pairs.csv", pairs_csv(pair_frame().drop("policy_rejected_logps")))


def build_missing_step(folder: Path) -> None:
    write(folder, "pairs.csv", pairs_csv(pair_frame().drop("step")))


def build_extra_columns(folder: Path) -> None:
    frame = pair_frame().with_columns(gpu=pl.lit("A100"), temperature=pl.lit(0.7),
                                      notes_from_labeller=pl.lit("fine"))
    write(folder, "pairs.csv", pairs_csv(frame))


def build_all_nan_column(folder: Path) -> None:
    frame = pair_frame().with_columns(pl.lit(float("nan")).alias("reference_chosen_logps"))
    frame.write_parquet(folder / "pairs.parquet")


def build_all_empty_column(folder: Path) -> None:
    frame = pair_frame().with_columns(pl.lit(None, dtype=pl.Float64).alias("loss"))
    write(folder, "pairs.csv", pairs_csv(frame))


def build_inf(folder: Path) -> None:
    frame = pair_frame().with_columns(
        pl.when((pl.col("step") == 3) & (pl.col("example_id") == "pair-1"))
        .then(float("-inf")).otherwise(pl.col("policy_rejected_logps"))
        .alias("policy_rejected_logps"))
    write(folder, "pairs.csv", pairs_csv(frame))


def build_negative_steps(folder: Path) -> None:
    frame = pair_frame().with_columns(pl.col("step") - 3)
    write(folder, "pairs.csv", pairs_csv(frame))


def build_duplicated_rows(folder: Path) -> None:
    frame = pair_frame()
    write(folder, "pairs.csv", pairs_csv(pl.concat([frame, frame.filter(pl.col("step") == 2)])))


def build_unsorted_steps(folder: Path) -> None:
    write(folder, "pairs.csv", pairs_csv(pair_frame().sample(fraction=1.0, shuffle=True, seed=3)))


def build_resumed_run(folder: Path) -> None:
    # Steps 1-8, then a restart from the checkpoint at step 5 that logs steps 6-12 again.
    records = log_records(8) + log_records(7, start=6)
    write(folder, "trainer_state.json", trainer_state(records))


def build_resumed_console(folder: Path) -> None:
    write(folder, "trainer_log.jsonl", jsonl_text(log_records(8) + log_records(7, start=6)))


def build_several_runs(folder: Path) -> None:
    frames = [pair_frame(seed=seed).with_columns(run=pl.lit(name))
              for seed, name in enumerate(["baseline", "lr-2e-6"])]
    write(folder, "pairs.csv", pairs_csv(pl.concat(frames)))


def build_latin1_csv(folder: Path) -> None:
    frame = pair_frame().with_columns(prompt=pl.lit("Qu'est-ce qu'un caf\u00e9 ?"))
    write(folder, "pairs.csv", pairs_csv(frame).encode("latin-1"))


def build_bom_csv(folder: Path) -> None:
    write(folder, "pairs.csv", b"\xef\xbb\xbf" + pairs_csv().encode("utf-8"))


def build_utf16_csv(folder: Path) -> None:
    write(folder, "pairs.csv", pairs_csv().encode("utf-16"))


def build_csv_gz(folder: Path) -> None:
    write(folder, "pairs.csv.gz", gzip.compress(pairs_csv().encode("utf-8")))


def build_pair_jsonl_gz(folder: Path) -> None:
    write(folder, "pairs.jsonl.gz", gzip.compress(pairs_jsonl().encode("utf-8")))


def build_step_jsonl_gz(folder: Path) -> None:
    write(folder, "trainer_log.jsonl.gz", gzip.compress(jsonl_text(log_records()).encode()))


def build_trainer_state_gz(folder: Path) -> None:
    data = gzip.compress(trainer_state(log_records()).encode("utf-8"))
    write(folder, "trainer_state.json.gz", data)


def build_corrupt_gz(folder: Path) -> None:
    data = gzip.compress(pairs_csv().encode("utf-8"))
    write(folder, "pairs.csv.gz", data[:10] + bytes(b ^ 0x5A for b in data[10:40]) + data[40:])


def build_cut_gz(folder: Path) -> None:
    data = gzip.compress(jsonl_text(log_records(40)).encode("utf-8"))
    write(folder, "trainer_log.jsonl.gz", data[: int(len(data) * 0.7)])


def build_no_logs_folder(folder: Path) -> None:
    (folder / "run").mkdir()
    write(folder / "run", "README.md", "# notes\nnothing logged yet\n")
    write(folder / "run", "plot.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)))


def build_binary(folder: Path) -> None:
    rng = np.random.default_rng(7)
    write(folder, "model.safetensors", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())


def build_binary_log(folder: Path) -> None:
    rng = np.random.default_rng(8)
    write(folder, "train.log", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())


def build_unreadable(folder: Path) -> None:
    write(folder, "trainer_state.json", trainer_state(log_records()))
    (folder / "trainer_state.json").chmod(0)


def build_step_overflow(folder: Path) -> None:
    frame = pair_frame().with_columns(pl.col("step").cast(pl.Utf8))
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 5)
                               .then(pl.lit("99999999999999999999")).otherwise(pl.col("step"))
                               .alias("step"))
    write(folder, "pairs.csv", pairs_csv(frame))


def build_step_overflow_json(folder: Path) -> None:
    records = log_records()
    records[3]["step"] = 2**70
    write(folder, "trainer_state.json", trainer_state(records))


def build_long_strings(folder: Path) -> None:
    frame = pair_frame().with_columns(
        prompt=pl.lit("why " * 50_000), chosen=pl.lit("x" * 200_000),
        example_id=pl.format("{}-{}", pl.lit("id" * 5_000), pl.col("example_id")))
    frame.write_parquet(folder / "pairs.parquet")


def build_console_without_metrics(folder: Path) -> None:
    write(folder, "train.out", "Loading checkpoint shards: 100%\n{'eos_token_id': 2}\nTraining done\n")


def build_prose(folder: Path) -> None:
    write(folder, "notes.txt", "We trained with beta 0.1 for three epochs.\nLoss went down.\n")


def build_json_not_log(folder: Path) -> None:
    write(folder, "tokenizer_config.json", json.dumps({"model_max_length": 4096,
                                                       "padding_side": "left"}))


def build_semicolon_csv(folder: Path) -> None:
    write(folder, "pairs.csv", pairs_csv().replace(",", ";"))


def build_valid_pairs(folder: Path) -> None:
    write(folder, "pairs.csv", pairs_csv())


def build_output_exists(folder: Path) -> None:
    build_valid_pairs(folder)
    write(folder, "report.html", "<p>an earlier report</p>\n")


def build_output_is_folder(folder: Path) -> None:
    build_valid_pairs(folder)
    (folder / "report.html").mkdir()


def build_nothing(folder: Path) -> None:
    """Write nothing: the case names a path that does not exist."""


def build_whitespace(folder: Path) -> None:
    write(folder, "trainer_state.json", "\n   \n\t\n")


def build_bom_trainer_state(folder: Path) -> None:
    write(folder, "trainer_state.json", b"\xef\xbb\xbf" + trainer_state(log_records()).encode())


def build_not_gzip(folder: Path) -> None:
    write(folder, "pairs.csv.gz", pairs_csv())


def build_fractional_step(folder: Path) -> None:
    frame = pair_frame().with_columns(pl.col("step").cast(pl.Utf8))
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 9).then(pl.lit("1.5"))
                               .otherwise(pl.col("step")).alias("step"))
    write(folder, "pairs.csv", pairs_csv(frame))


def build_cut_tfevents(folder: Path) -> None:
    data = TFEVENTS.read_bytes()
    write(folder, "run.events.out.tfevents", data[: len(data) // 2])


def build_pickle(folder: Path) -> None:
    # The bytes of a pickle that would run `print` if it were ever loaded.
    write(folder, "training_args.bin", b"cbuiltins\nprint\n(S'unpickled'\ntR.")


def build_wandb_two_runs(folder: Path) -> None:
    write(folder, "panel.csv", '"Step","a - train/loss","b - train/loss"\n"1","0.69","0.70"\n')


def build_output_below_file(folder: Path) -> None:
    build_valid_pairs(folder)


CHECK = ("check", "-v", "--fail-on", "never")
TFEVENTS = (Path(__file__).resolve().parent.parent / "fixtures" / "real_logs"
            / "adaptive-simpo-llama3-8b-lr5e-5-logp-collapse.events.out.tfevents")
EMPTY_FIX = "pass the log once the trainer has written records to it"
NO_FORMAT_FIX = ("pass a pair log (.parquet, .csv, .jsonl, also gzip-compressed) or a trainer step "
                 "log (trainer_state.json, console output, trainer_log.jsonl, TensorBoard events, "
                 "W&B CSV export)")
CUT_LINE = ("the last line is cut off where the file ends (the log was still being written, or "
            "its writer stopped); it was skipped")
PAIRS_READ = "pairs [pairs, 48 rows, steps 0-5"
FOOTER = ("pairs.parquet: ends before its parquet footer (the writer crashed or is still writing "
          "it); pass the file after its writer has closed it")

CASES: list[Case] = [
    # Empty and truncated files
    Case("empty-csv", "pair log CSV of 0 bytes", build_empty_csv, (*CHECK, "pairs.csv"),
         ERROR, f"pairs.csv: the file is empty; {EMPTY_FIX}"),
    Case("empty-parquet", "parquet file of 0 bytes", build_empty_parquet,
         (*CHECK, "pairs.parquet"), ERROR, f"pairs.parquet: the file is empty; {EMPTY_FIX}"),
    Case("empty-log", "console log of 0 bytes", build_empty_log, (*CHECK, "train.log"),
         ERROR, f"train.log: the file is empty; {EMPTY_FIX}"),
    Case("whitespace-only", "trainer_state.json of blank lines", build_whitespace,
         (*CHECK, "trainer_state.json"), ERROR,
         f"trainer_state.json: the file holds only white space; {EMPTY_FIX}"),
    Case("header-only", "CSV with the header row and no data rows", build_header_only,
         (*CHECK, "pairs.csv"), ERROR,
         "pairs.csv: the table has no rows; pass a log with at least one scored pair"),
    Case("truncated-parquet", "parquet cut in half by a crashed writer", build_truncated_parquet,
         (*CHECK, "pairs.parquet"), ERROR, FOOTER),
    Case("truncated-parquet-report", "the same, given to `report`", build_truncated_parquet,
         ("report", "pairs.parquet", "-o", "report.html"), ERROR, FOOTER),

    # Logs still being written: read up to the last complete record, with a note
    Case("cut-pair-jsonl", "pair log JSONL whose last line is cut", build_cut_pair_jsonl,
         (*CHECK, "pairs.jsonl"), READ, f"pairs [pairs, 47 rows…note line 48: {CUT_LINE}"),
    Case("cut-pair-csv", "pair log CSV whose last line is cut", build_cut_pair_csv,
         (*CHECK, "pairs.csv"), READ, f"pairs [pairs, 47 rows…note line 49: {CUT_LINE}"),
    Case("cut-step-jsonl", "trainer_log.jsonl whose last line is cut", build_cut_step_jsonl,
         (*CHECK, "trainer_log.jsonl"), READ, "trainer_log [steps, 9 rows, steps 1-9…note line "
         "10: the last record is cut off where the file ends and was skipped"),
    Case("cut-console", "console log whose last printed dict is cut", build_cut_console,
         (*CHECK, "train.log"), READ, "train [steps, 9 rows, steps 1-9…note line 12: the last "
         "record is cut off where the file ends; the complete records before it were read"),
    Case("cut-trainer-state", "trainer_state.json cut mid-write", build_cut_trainer_state,
         (*CHECK, "trainer_state.json"), READ, "trainer_state [steps, 9 rows, steps 1-9…note "
         "line 168: the file is cut off there (the trainer was still writing it, or stopped); "
         "the 9 complete log_history records before the cut were read"),
    Case("cut-tfevents", "TensorBoard event file cut in half", build_cut_tfevents,
         (*CHECK, "run.events.out.tfevents"), READ, "note byte …: the last event record is cut "
         "off where the file ends (the trainer was still writing it, or stopped); the records "
         "before it were read"),
    Case("cut-gz", "gzip stream cut off mid-write", build_cut_gz,
         (*CHECK, "trainer_log.jsonl.gz"), READ, "note the gzip stream ends before its end marker "
         "(the log was still being written, or its writer stopped); the part before the cut was "
         "read"),

    # Wrong types and missing columns
    Case("text-in-logps-csv", "text in a log-prob column of a CSV", build_text_in_logps,
         (*CHECK, "pairs.csv"), ERROR, "pairs.csv: column 'policy_chosen_logps', row 3: expected "
         "a number, got 'n/a'; fix the value or drop the row"),
    Case("text-in-logps-parquet", "string column of log-probs in parquet", build_text_in_parquet,
         (*CHECK, "pairs.parquet"), ERROR, "pairs.parquet: column 'policy_rejected_logps', row 5: "
         "expected a number, got '-12,5'; fix the value or drop the row"),
    Case("missing-column", "no policy_rejected_logps column", build_missing_column,
         (*CHECK, "pairs.csv"), ERROR, "pairs.csv: missing column 'policy_rejected_logps' (and no "
         "chosen_logratio/rejected_logratio); add the policy log-probs or the log-ratios, or map "
         "them with --column"),
    Case("missing-step", "no step column", build_missing_step, (*CHECK, "pairs.csv"), ERROR,
         "pairs.csv: missing column 'step'; add the optimizer step per row or map it with "
         "--column step=NAME"),
    Case("column-map-missing", "--column names a column the file lacks", build_valid_pairs,
         (*CHECK, "--column", "loss=pair_loss", "pairs.csv"), ERROR, "pairs.csv: column "
         "'pair_loss' given for loss is not in the file; the file has: step, example_id, …"),
    Case("fractional-step", "a step of 1.5", build_fractional_step, (*CHECK, "pairs.csv"), ERROR,
         "pairs.csv: column 'step', row 10: expected an integer that fits in 64 bits, got '1.5'; "
         "fix the value or drop the row"),
    Case("step-overflow-csv", "a step of 99999999999999999999 in a CSV", build_step_overflow,
         (*CHECK, "pairs.csv"), ERROR, "pairs.csv: column 'step', row 6: expected an integer that "
         "fits in 64 bits, got '99999999999999999999'; fix the value or drop the row"),
    Case("step-overflow-json", "a step of 2**70 in trainer_state.json", build_step_overflow_json,
         (*CHECK, "trainer_state.json"), ERROR, "trainer_state.json: log record 4: step "
         "1.18059e+21 does not fit in a 64-bit integer; fix the step of that record or remove "
         "the record"),
    Case("extra-columns", "unknown extra columns", build_extra_columns, (*CHECK, "pairs.csv"),
         READ, f"{PAIRS_READ}…note columns not read (no canonical meaning; map one with "
         "--column): gpu, temperature, notes_from_labeller"),

    # Odd values
    Case("all-nan-column", "a reference column that is NaN in every row", build_all_nan_column,
         (*CHECK, "pairs.parquet"), READ, f"{PAIRS_READ}…ERROR non-finite-values [step 0]"),
    Case("all-empty-column", "a loss column with every cell empty", build_all_empty_column,
         (*CHECK, "pairs.csv"), READ, f"{PAIRS_READ}…0 error(s)"),
    Case("inf-logps", "-inf in one log-prob", build_inf, (*CHECK, "pairs.csv"), READ,
         f"{PAIRS_READ}…ERROR non-finite-values [step 3]"),
    Case("negative-steps", "steps from -3 to 2", build_negative_steps, (*CHECK, "pairs.csv"),
         READ, "pairs [pairs, 48 rows, steps -3-2"),
    Case("duplicated-rows", "every pair of one step logged twice", build_duplicated_rows,
         (*CHECK, "pairs.csv"), READ, "pairs [pairs, 56 rows…WARNING duplicate-steps [step 2]"),
    Case("unsorted-steps", "rows in random order", build_unsorted_steps, (*CHECK, "pairs.csv"),
         READ, f"{PAIRS_READ}…0 error(s), 0 warning(s)"),
    Case("resumed-trainer-state", "trainer_state.json of a resumed run: steps 6-8 twice",
         build_resumed_run, (*CHECK, "trainer_state.json"), READ,
         "trainer_state [steps, 15 rows, steps 1-12…WARNING duplicate-steps [train step 6]"),
    Case("resumed-jsonl", "trainer_log.jsonl of a resumed run", build_resumed_console,
         (*CHECK, "trainer_log.jsonl"), READ,
         "trainer_log [steps, 15 rows, steps 1-12…WARNING duplicate-steps [train step 6]"),
    Case("several-runs", "two runs in one CSV (a run column)", build_several_runs,
         (*CHECK, "pairs.csv"), READ,
         "baseline [pairs, 48 rows, steps 0-5…lr-2e-6 [pairs, 48 rows, steps 0-5"),
    Case("long-strings", "200 kB texts and 10 kB example ids", build_long_strings,
         ("report", "pairs.parquet", "-o", "report.html"), READ, "wrote report.html"),

    # Encodings and compression
    Case("latin1-csv", "CSV in Latin-1, not UTF-8", build_latin1_csv, (*CHECK, "pairs.csv"),
         ERROR, "pairs.csv: line 2, byte …: 0xe9 is not UTF-8 (the file is in another encoding, "
         "such as Latin-1); save the file as UTF-8, for example with `iconv -f latin1 -t utf-8`"),
    Case("utf16-csv", "CSV in UTF-16", build_utf16_csv, (*CHECK, "pairs.csv"), ERROR,
         "pairs.csv: is encoded as UTF-16 (it starts with a UTF-16 byte-order mark); save it as "
         "UTF-8, for example with `iconv -f UTF-16 -t UTF-8`"),
    Case("bom-csv", "CSV that starts with a UTF-8 byte-order mark", build_bom_csv,
         (*CHECK, "pairs.csv"), READ, PAIRS_READ),
    Case("bom-trainer-state", "trainer_state.json with a UTF-8 byte-order mark",
         build_bom_trainer_state, (*CHECK, "trainer_state.json"), READ,
         "trainer_state [steps, 10 rows, steps 1-10"),
    Case("semicolon-csv", "CSV separated by semicolons", build_semicolon_csv,
         (*CHECK, "pairs.csv"), ERROR, "pairs.csv: line 1: the header contains no ',' but ';', so "
         "its fields are separated by ';'; save the file with ',' between fields (or with tabs "
         "and a .tsv name)"),
    Case("csv-gz", "gzip-compressed pair log CSV", build_csv_gz, (*CHECK, "pairs.csv.gz"),
         READ, PAIRS_READ),
    Case("pair-jsonl-gz", "gzip-compressed pair log JSONL", build_pair_jsonl_gz,
         (*CHECK, "pairs.jsonl.gz"), READ, PAIRS_READ),
    Case("step-jsonl-gz", "gzip-compressed trainer_log.jsonl", build_step_jsonl_gz,
         (*CHECK, "trainer_log.jsonl.gz"), READ, "trainer_log [steps, 10 rows, steps 1-10"),
    Case("trainer-state-gz", "gzip-compressed trainer_state.json", build_trainer_state_gz,
         (*CHECK, "trainer_state.json.gz"), READ, "trainer_state [steps, 10 rows, steps 1-10"),
    Case("corrupt-gz", "gzip file with corrupted bytes", build_corrupt_gz,
         (*CHECK, "pairs.csv.gz"), ERROR, "pairs.csv.gz: invalid gzip data in compressed bytes "
         "0-… (…); compress the log again from its source, or pass the uncompressed file"),
    Case("not-gzip", "plain CSV named .csv.gz", build_not_gzip, (*CHECK, "pairs.csv.gz"), ERROR,
         "pairs.csv.gz: is named .gz but is not gzip data (it does not start with the bytes "
         "1f 8b); rename it without .gz, or compress it with gzip"),

    # Files and folders that are not logs
    Case("missing-path", "a path that does not exist", build_nothing, (*CHECK, "run.parquet"),
         ERROR, "run.parquet: no such file or folder; check the path"),
    Case("folder-without-logs", "folder with a README and an image", build_no_logs_folder,
         (*CHECK, "run"), ERROR, "run: no step log found in this folder; pass trainer_state.json, "
         "trainer_log.jsonl, an event file or the console output"),
    Case("binary-file", "random bytes named .safetensors", build_binary,
         (*CHECK, "model.safetensors"), ERROR,
         f"model.safetensors: is a binary file in no supported format; {NO_FORMAT_FIX}"),
    Case("binary-log", "random bytes named .log", build_binary_log, (*CHECK, "train.log"),
         ERROR, f"train.log: is a binary file in no supported format; {NO_FORMAT_FIX}"),
    Case("unreadable", "trainer_state.json with mode 000", build_unreadable,
         (*CHECK, "trainer_state.json"), ERROR, "trainer_state.json: cannot be opened (Permission "
         "denied); check the file's permissions, or run as a user who can read it",
         other_user=True),
    Case("pickle", "training_args.bin, a pickle", build_pickle,
         (*CHECK, "training_args.bin"), ERROR, "training_args.bin: is a pickle "
         "(training_args.bin); dpodiag never unpickles input; pass trainer_state.json from the "
         "same folder instead"),
    Case("console-without-metrics", "console log with no metrics in it",
         build_console_without_metrics, (*CHECK, "train.out"), ERROR, "train.out: lines 1-4: no "
         "metrics found in this console log; pass a file that contains the printed training dicts"),
    Case("prose-text", "a text file of prose", build_prose, (*CHECK, "notes.txt"), ERROR,
         "notes.txt: lines 1-3: no metrics found in this console log; pass a file that contains "
         "the printed training dicts"),
    Case("json-not-log", "a JSON config that is not a log", build_json_not_log,
         (*CHECK, "tokenizer_config.json"), ERROR, "tokenizer_config.json: contains run-level "
         "values and no per-step records (keys: model_max_length, padding_side); pass the "
         "trainer's log: trainer_state.json, a log_history JSON or the console output"),
    Case("wandb-two-runs", "W&B panel export with two runs", build_wandb_two_runs,
         (*CHECK, "panel.csv"), ERROR, "panel.csv: contains 2 W&B runs (a, b); export one run per "
         "file from W&B, or read one run with dpodiag.load(path, run_name=NAME)"),

    # Outputs
    Case("output-folder-missing", "report -o into a folder that does not exist yet",
         build_valid_pairs, ("report", "pairs.csv", "-o", "missing/report.html"), READ,
         "wrote missing/report.html"),
    Case("output-below-file", "report -o below a file", build_output_below_file,
         ("report", "pairs.csv", "-o", "pairs.csv/report.html"), ERROR, "pairs.csv/report.html: "
         "pairs.csv is a file, not a folder; choose another output path"),
    Case("output-exists", "report -o onto an existing file, without --force", build_output_exists,
         ("report", "pairs.csv", "-o", "report.html"), ERROR, "report.html: file exists; pass "
         "--force to overwrite it or choose another name"),
    Case("output-exists-force", "the same with --force", build_output_exists,
         ("report", "pairs.csv", "-o", "report.html", "--force"), READ, "wrote report.html"),
    Case("output-is-folder", "report -o onto a folder", build_output_is_folder,
         ("report", "pairs.csv", "-o", "report.html"), ERROR, "Invalid value for '-o' / "
         "'--output': File 'report.html' is a directory. (see 'dpodiag report --help')"),
]


def markdown_table(cases: list[Case]) -> str:
    """Return the corpus table of docs/robustness.md."""
    lines = ["| case | input | command | outcome | message |", "|---|---|---|---|---|"]
    for case in cases:
        outcome = "exit 2, one line on stderr" if case.outcome == ERROR else (
            f"read, exit {case.expected_status}")
        command = "dpodiag " + " ".join(case.args)
        message = case.message.replace("|", "\\|")
        lines.append(f"| `{case.name}` | {case.description} | `{command}` | {outcome} | "
                     f"`{message}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="FOLDER", type=Path,
                       help="write every case into FOLDER/<case name>/")
    group.add_argument("--table", action="store_true", help="print the Markdown table")
    options = parser.parse_args(argv)
    if options.table:
        sys.stdout.write(markdown_table(CASES))
        return 0
    for case in CASES:
        folder = options.write / case.name
        folder.mkdir(parents=True, exist_ok=False)
        case.build(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
