"""Markdown tables of training results, such as the "Training results" table of a model card.

transformers writes that table into the README.md of a trained model (the model card). People
paste the notebook progress table into Markdown in the same form. A header row names "Training
Loss", "Epoch", "Step", "Validation Loss" and each eval metric ("Rewards/chosen", "Nll Loss").
A row of dashes follows, then one row per evaluation. The rows are read as the notebook
progress table is (see `notebook.table_records`): the Training Loss column gives train records,
and the other metrics give eval records.
"""

from __future__ import annotations

import re
from pathlib import Path

from dpodiag.errors import NoDataError
from dpodiag.io.source import read_text
from dpodiag.io.steplogs import console
from dpodiag.io.steplogs.notebook import TABLE_MARKERS, cell_number, table_records
from dpodiag.io.steplogs.table import RawLog

# A table row has two or more "|"; the leading and trailing "|" are optional in Markdown.
MIN_BARS = 2
# The heading under which transformers writes the table into a model card.
HEADING = re.compile(r"^#+\s*Training results\s*$", re.MULTILINE)
# A number written with a decimal comma, as some locales print it: "1,858179".
DECIMAL_COMMA = re.compile(r"^-?\d+,\d+$")
# A cell of the line under the header: dashes, with colons for alignment.
DIVIDER_CELL = re.compile(r"^:?-+:?$")


def results_tables(text: str) -> list[tuple[int, list[str], list[list[str]]]]:
    """Return (line number, header, rows) of every Markdown table whose header names a
    training or validation loss, in file order."""
    lines = text.splitlines()
    tables = []
    index = 0
    while index < len(lines) - 1:
        header, divider = _cells(lines[index]), _cells(lines[index + 1])
        if not header or not divider or not all(DIVIDER_CELL.match(cell) for cell in divider):
            index += 1
            continue
        start = index + 1
        rows = []
        index += 2
        while index < len(lines) and (row := _cells(lines[index])):
            rows.append(row)
            index += 1
        if {marker.lower() for marker in TABLE_MARKERS} & {cell.lower() for cell in header}:
            tables.append((start, header, rows))
    return tables


def _cells(line: str) -> list[str] | None:
    """Return the cells of a table row, or None for a line that is not one."""
    if line.count("|") < MIN_BARS:
        return None
    cells = line.strip().split("|")
    if cells[0].strip() == "":
        cells = cells[1:]
    if cells and cells[-1].strip() == "":
        cells = cells[:-1]
    # Markdown emphasis around a cell ("**0.69**") is not part of its value.
    return [" ".join(cell.strip().strip("*_`").split()) for cell in cells]


def sniff(path: Path, head: bytes) -> str | None:
    """Return "results-table" for text with a results table or a model card's Training results
    heading. Text with a printed metrics dict is left to the console reader."""
    text = head.decode("utf-8", errors="replace")
    if ("Training results" not in text and "loss" not in text.lower()) or console.sniff(path, head):
        return None
    return "results-table" if results_tables(text) or HEADING.search(text) else None


def read(path: Path, fmt: str = "results-table") -> RawLog:
    """Read the first results table of a Markdown file; later tables are named in a note."""
    text = read_text(path)
    tables = results_tables(text)
    if not tables and HEADING.search(text):
        raise NoDataError(path, "the Training results section has no table, because the run "
                          "logged no evaluation", "pass the trainer's log (trainer_state.json or the "
                          "console output)")
    if not tables:
        raise NoDataError(path, "no Markdown table with a 'Training Loss' or 'Validation Loss' "
                          "column", "pass the trainer's log, or the model card's Training results table")

    line, header, rows = tables[0]
    _check_one_run(path, line, header, rows)
    records = table_records(header, rows)
    if not records:
        if any(DECIMAL_COMMA.match(cell) for row in rows for cell in row):
            raise NoDataError(path, f"line {line}: the results table writes its numbers with decimal "
                              "commas", "write them with decimal points (0.6931, not 0,6931)")
        raise NoDataError(path, f"line {line}: the results table has no number in its rows",
                          "pass a table with logged values")

    notes = [f"results table at line {line}: {len(rows)} rows; its Training Loss column is the "
             "last training loss logged before each evaluation"]
    if len(tables) > 1:
        notes.append(f"{len(tables) - 1} more results tables (lines "
                     f"{', '.join(str(table[0]) for table in tables[1:])}) were not read; "
                     "save each run's table in a file of its own")
    return RawLog(records=records, format=fmt, notes=notes)


def _check_one_run(path: Path, line: int, header: list[str], rows: list[list[str]]) -> None:
    """Raise for a table without rows, or one whose first column labels rows of several runs."""
    if not rows:
        raise NoDataError(path, f"line {line}: the results table has no rows",
                          "pass the trainer's log (trainer_state.json or the console output)")
    labels = {row[0] for row in rows if row and cell_number(row[0]) is None
              and not DECIMAL_COMMA.match(row[0]) and row[0].lower() != "no log"}
    if len(labels) > 1:
        examples = ", ".join(sorted(labels)[:4])
        raise NoDataError(path, f"line {line}: the results table compares runs (its {header[0]!r} "
                          f"column holds {examples})", "save each run's rows in a table of its own")
