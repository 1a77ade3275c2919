"""Jupyter notebooks (`.ipynb`, nbformat 4) whose saved cell outputs hold a training log.

Two forms occur, and the first found wins:
- printed log dicts in the cells' text outputs (stdout, `print(logs)`, the PrinterCallback of
  `disable_tqdm=True`), read as console output;
- the HTML progress table that transformers' NotebookProgressCallback draws by default. It has
  one row per evaluation: "Step" (or "Epoch"), "Training Loss" (the last training loss logged
  before that evaluation), "Validation Loss", then each eval metric with its `eval_` prefix
  dropped and each word capitalised ("Rewards/chosen", "Nll Loss"). Values are printed with 6
  decimals, and "No log" stands for a missing value.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from dpodiag.dialects import HF_SUMMARY_KEYS
from dpodiag.errors import InputError, NoDataError
from dpodiag.io.source import read_text
from dpodiag.io.steplogs import console
from dpodiag.io.steplogs.table import RawLog, numeric_items

TABLE_MARKERS = ("Training Loss", "Validation Loss")


def sniff(path: Path, head: bytes) -> str | None:
    """Return "notebook" for a JSON object named .ipynb or holding an "nbformat" key.

    Jupyter writes the keys sorted, so "nbformat" comes after the cells, and only the name
    identifies a notebook larger than the sniffed head.
    """
    if not head.lstrip().startswith(b"{"):
        return None
    if path.suffix.lower() == ".ipynb" or b'"nbformat"' in head:
        return "notebook"
    return None


def read(path: Path, fmt: str = "notebook") -> RawLog:
    """Read the printed dicts, or else the progress table, of a notebook's saved outputs."""
    try:
        notebook = json.loads(read_text(path))
    except ValueError as error:
        raise InputError(path, f"cannot be parsed as a Jupyter notebook ({error})",
                         "pass the .ipynb file as Jupyter saved it") from None
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list):
        raise InputError(path, "is not an nbformat 4 notebook (no top-level \"cells\" list)",
                         "save it with Jupyter 4 or later, or pass the exported console text")

    texts, tables = _outputs(cells)
    records, notes = _printed_records(texts)
    # The repr of TrainOutput, shown by a cell that ends in trainer.train(), holds only the
    # end-of-training summary.
    if any(set(record) - HF_SUMMARY_KEYS - {"epoch", "step"} for record in records):
        if tables:
            notes.append(f"{len(tables)} progress tables were not read, because printed log "
                         "dicts were found")
        return RawLog(records=records, format="notebook", notes=notes)
    if tables:
        cell, header, rows = tables[-1]
        records = table_records(header, rows)
        notes = [f"progress table of cell {cell}: {len(rows)} rows; its Training Loss column is "
                 "the last training loss logged before each evaluation"]
        if len(tables) > 1:
            notes.append(f"{len(tables) - 1} earlier progress tables (cells "
                         f"{', '.join(str(t[0]) for t in tables[:-1])}) were not read")
        if records:
            return RawLog(records=records, format="notebook", notes=notes)
    raise NoDataError(path, f"no training log in the saved outputs of its {len(cells)} cells",
                      "run the training cell and save the notebook with its outputs, or pass "
                      "the trainer's trainer_state.json")


def _outputs(cells: list[Any]) -> tuple[list[tuple[int, str]], list[tuple[int, list, list]]]:
    # (cell number, text) of every text output, and (cell number, header, rows) of every table
    # whose header names a training or validation loss. Cells are numbered from 1.
    texts: list[tuple[int, str]] = []
    tables: list[tuple[int, list, list]] = []
    for number, cell in enumerate(cells, start=1):
        if not isinstance(cell, dict):
            continue
        for output in cell.get("outputs") or []:
            if not isinstance(output, dict):
                continue
            if output.get("output_type") == "stream":
                texts.append((number, _joined(output.get("text"))))
                continue
            data = output.get("data") or {}
            if "text/html" in data:
                for header, rows in _html_tables(_joined(data["text/html"])):
                    if any(marker in header for marker in TABLE_MARKERS):
                        tables.append((number, header, rows))
            elif "text/plain" in data:
                texts.append((number, _joined(data["text/plain"])))
    return texts, tables


def _joined(value: Any) -> str:
    # nbformat stores multi-line strings either whole or as a list of lines.
    if isinstance(value, list):
        return "".join(str(part) for part in value)
    return value if isinstance(value, str) else ""


def _printed_records(texts: list[tuple[int, str]]) -> tuple[list[dict[str, float]], list[str]]:
    records: list[dict[str, float]] = []
    notes: list[str] = []
    cells: list[int] = []
    dropped: set[str] = set()
    for cell, text in texts:
        found, cell_notes = console.extract_dicts(text)
        notes += [f"cell {cell}: {note}" for note in cell_notes]
        for _, parsed in found:
            record, text_keys = numeric_items(parsed)
            records.append(record)
            dropped.update(text_keys)
            cells.append(cell)
    if records:
        where = (f"cell {cells[0]}" if min(cells) == max(cells)
                 else f"cells {min(cells)}-{max(cells)}")
        notes.append(f"{len(records)} printed dicts read from the outputs of {where}")
    if dropped:
        notes.append(f"non-numeric fields not read: {', '.join(sorted(dropped))}")
    return records, notes


def table_records(header: list[str], rows: list[list[str]]) -> list[dict[str, float]]:
    """Turn the progress table into train records (step, loss) and eval records.

    A Training Loss equal to the one of the row before is the same logged record seen again,
    so it is kept once.
    """
    keys = [_key(name) for name in header]
    records: list[dict[str, float]] = []
    previous_loss: float | None = None
    for row in rows:
        values = {key: cell_number(cell) for key, cell in zip(keys, row)}
        position = {k: v for k, v in values.items() if k in ("step", "epoch") and v is not None}
        train_loss = values.pop("loss", None)
        if train_loss is not None and train_loss != previous_loss:
            records.append({**position, "loss": train_loss})
        previous_loss = train_loss if train_loss is not None else previous_loss
        metrics = {k: v for k, v in values.items()
                   if v is not None and k not in ("step", "epoch")}
        if metrics:
            records.append({**position, **metrics})
    return records


def _key(name: str) -> str:
    # "Step" -> step, "Training Loss" -> loss, "Validation Loss" -> eval_loss,
    # "Rewards/chosen" or "Rewards / Chosen" -> eval_rewards/chosen, "Nll Loss" -> eval_nll_loss.
    name = " ".join(name.split())
    fixed = {"step": "step", "epoch": "epoch", "training loss": "loss", "validation loss": "eval_loss"}
    if name.lower() in fixed:
        return fixed[name.lower()]
    return "eval_" + name.replace(" / ", "/").replace(" ", "_").lower()


def cell_number(cell: str) -> float | None:
    """Return the number in a table cell, or None for text such as "No log"."""
    try:
        return float(cell)
    except ValueError:
        return None


class _TableParser(HTMLParser):
    """Collect the header cells and row cells of every <table> in an HTML fragment."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[list[str], list[list[str]]]] = []
        self._header: list[str] = []
        self._rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self._in_table = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self._in_table, self._header, self._rows = True, [], []
        elif tag == "tr" and self._in_table:
            self._rows.append([])
        elif tag in ("th", "td") and self._in_table:
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._cell is not None:
            text = " ".join("".join(self._cell).split())
            if tag == "th":
                self._header.append(text)
            elif self._rows:
                self._rows[-1].append(text)
            self._cell = None
        elif tag == "table" and self._in_table:
            self.tables.append((self._header, [row for row in self._rows if row]))
            self._in_table = False


def _html_tables(html: str) -> list[tuple[list[str], list[list[str]]]]:
    parser = _TableParser()
    parser.feed(html)
    parser.close()
    return parser.tables
