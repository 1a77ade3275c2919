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
from dataclasses import dataclass, field
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
    root_skip: str | None = None
    """The reason to skip the case when the tests run as root."""
    absent: tuple[str, ...] = field(default=())
    """Files that must not exist in the folder after the command ran."""

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
    write(folder, "pairs.csv", cut_at_last_line(pairs_csv(), keep=0.8))


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


CHECK = ("check", "-v", "--fail-on", "never")

CASES: list[Case] = [
    Case("empty-csv", "pair log CSV of 0 bytes", build_empty_csv,
         (*CHECK, "pairs.csv"), ERROR, "pairs.csv: …"),
    Case("empty-parquet", "parquet file of 0 bytes", build_empty_parquet,
         (*CHECK, "pairs.parquet"), ERROR, "pairs.parquet: …"),
    Case("empty-log", "console log of 0 bytes", build_empty_log,
         (*CHECK, "train.log"), ERROR, "train.log: …"),
    Case("header-only", "CSV with the header row and no data rows", build_header_only,
         (*CHECK, "pairs.csv"), ERROR, "pairs.csv: …"),
    Case("truncated-parquet", "parquet cut in half by a crashed writer", build_truncated_parquet,
         (*CHECK, "pairs.parquet"), ERROR, "pairs.parquet: …"),
    Case("cut-pair-jsonl", "pair log JSONL whose last line is cut", build_cut_pair_jsonl,
         (*CHECK, "pairs.jsonl"), READ, "…"),
    Case("cut-pair-csv", "pair log CSV whose last line is cut", build_cut_pair_csv,
         (*CHECK, "pairs.csv"), READ, "…"),
    Case("cut-step-jsonl", "trainer_log.jsonl whose last line is cut", build_cut_step_jsonl,
         (*CHECK, "trainer_log.jsonl"), READ, "…"),
    Case("cut-console", "console log whose last dict is cut", build_cut_console,
         (*CHECK, "train.log"), READ, "…"),
    Case("cut-trainer-state", "trainer_state.json cut mid-write", build_cut_trainer_state,
         (*CHECK, "trainer_state.json"), READ, "…"),
    Case("text-in-logps-csv", "text in a log-prob column of a CSV", build_text_in_logps,
         (*CHECK, "pairs.csv"), ERROR, "pairs.csv: …"),
    Case("text-in-logps-parquet", "string column of log-probs in parquet", build_text_in_parquet,
         (*CHECK, "pairs.parquet"), ERROR, "pairs.parquet: …"),
    Case("missing-column", "no policy_rejected_logps column", build_missing_column,
         (*CHECK, "pairs.csv"), ERROR, "pairs.csv: …"),
    Case("missing-step", "no step column", build_missing_step,
         (*CHECK, "pairs.csv"), ERROR, "pairs.csv: …"),
    Case("extra-columns", "unknown extra columns", build_extra_columns,
         (*CHECK, "pairs.csv"), READ, "…"),
    Case("all-nan-column", "a reference column that is NaN in every row", build_all_nan_column,
         (*CHECK, "pairs.parquet"), READ, "…"),
    Case("all-empty-column", "a loss column with every cell empty", build_all_empty_column,
         (*CHECK, "pairs.csv"), READ, "…"),
    Case("inf-logps", "-inf in one log-prob", build_inf, (*CHECK, "pairs.csv"), READ, "…"),
    Case("negative-steps", "steps from -3", build_negative_steps,
         (*CHECK, "pairs.csv"), READ, "…"),
    Case("duplicated-rows", "every pair of one step twice", build_duplicated_rows,
         (*CHECK, "pairs.csv"), READ, "…"),
    Case("unsorted-steps", "rows in random order", build_unsorted_steps,
         (*CHECK, "pairs.csv"), READ, "…"),
    Case("resumed-trainer-state", "trainer_state.json of a resumed run: steps 6-8 logged twice",
         build_resumed_run, (*CHECK, "trainer_state.json"), READ, "…"),
    Case("resumed-jsonl", "trainer_log.jsonl of a resumed run", build_resumed_console,
         (*CHECK, "trainer_log.jsonl"), READ, "…"),
    Case("several-runs", "two runs in one CSV (run column)", build_several_runs,
         (*CHECK, "pairs.csv"), READ, "…"),
    Case("latin1-csv", "CSV in Latin-1, not UTF-8", build_latin1_csv,
         (*CHECK, "pairs.csv"), READ, "…"),
    Case("bom-csv", "CSV that starts with a UTF-8 byte-order mark", build_bom_csv,
         (*CHECK, "pairs.csv"), READ, "…"),
    Case("utf16-csv", "CSV in UTF-16", build_utf16_csv,
         (*CHECK, "pairs.csv"), ERROR, "pairs.csv: …"),
    Case("csv-gz", "gzip-compressed pair log CSV", build_csv_gz,
         (*CHECK, "pairs.csv.gz"), READ, "…"),
    Case("pair-jsonl-gz", "gzip-compressed pair log JSONL", build_pair_jsonl_gz,
         (*CHECK, "pairs.jsonl.gz"), READ, "…"),
    Case("step-jsonl-gz", "gzip-compressed trainer_log.jsonl", build_step_jsonl_gz,
         (*CHECK, "trainer_log.jsonl.gz"), READ, "…"),
    Case("trainer-state-gz", "gzip-compressed trainer_state.json", build_trainer_state_gz,
         (*CHECK, "trainer_state.json.gz"), READ, "…"),
    Case("corrupt-gz", "gzip file with corrupted bytes", build_corrupt_gz,
         (*CHECK, "pairs.csv.gz"), ERROR, "pairs.csv.gz: …"),
    Case("cut-gz", "gzip stream cut off mid-write", build_cut_gz,
         (*CHECK, "trainer_log.jsonl.gz"), READ, "…"),
    Case("folder-without-logs", "folder with a README and an image", build_no_logs_folder,
         (*CHECK, "run"), ERROR, "run: …"),
    Case("binary-file", "random bytes named .safetensors", build_binary,
         (*CHECK, "model.safetensors"), ERROR, "model.safetensors: …"),
    Case("binary-log", "random bytes named .log", build_binary_log,
         (*CHECK, "train.log"), ERROR, "train.log: …"),
    Case("unreadable", "trainer_state.json with mode 000", build_unreadable,
         (*CHECK, "trainer_state.json"), ERROR, "trainer_state.json: …"),
    Case("step-overflow-csv", "a step of 99999999999999999999 in a CSV", build_step_overflow,
         (*CHECK, "pairs.csv"), ERROR, "pairs.csv: …"),
    Case("step-overflow-json", "a step of 2**70 in trainer_state.json", build_step_overflow_json,
         (*CHECK, "trainer_state.json"), ERROR, "trainer_state.json: …"),
    Case("long-strings", "200 kB texts and 10 kB example ids", build_long_strings,
         ("report", "pairs.parquet", "-o", "report.html"), READ, "wrote report.html…"),
    Case("console-without-metrics", "console log with no metrics in it",
         build_console_without_metrics, (*CHECK, "train.out"), ERROR, "train.out: …"),
    Case("prose-text", "a text file of prose", build_prose,
         (*CHECK, "notes.txt"), ERROR, "notes.txt: …"),
    Case("json-not-log", "a JSON config that is not a log", build_json_not_log,
         (*CHECK, "tokenizer_config.json"), ERROR, "tokenizer_config.json: …"),
    Case("semicolon-csv", "CSV separated by semicolons", build_semicolon_csv,
         (*CHECK, "pairs.csv"), ERROR, "pairs.csv: …"),
    Case("missing-path", "a path that does not exist", build_nothing,
         (*CHECK, "run.parquet"), ERROR, "run.parquet: …"),
    Case("output-folder-missing", "report -o into a folder that does not exist",
         build_valid_pairs, ("report", "pairs.csv", "-o", "missing/report.html"), ERROR,
         "missing/report.html: …"),
    Case("output-exists", "report -o onto an existing file, without --force", build_output_exists,
         ("report", "pairs.csv", "-o", "report.html"), ERROR, "report.html: …"),
    Case("output-is-folder", "report -o onto a folder", build_output_is_folder,
         ("report", "pairs.csv", "-o", "report.html"), ERROR, "report.html: …"),
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
