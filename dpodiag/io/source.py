"""The bytes of an input file, as every reader sees them.

A file named `*.gz` is gzip-decompressed transparently, so `pairs.csv.gz`, `trainer_log.jsonl.gz`
and `trainer_state.json.gz` read like the files they compress, and the name without `.gz` gives
the format. A UTF-8 byte-order mark at the start of a file is dropped. A text table whose last
line was cut off by a writer that stopped (a crashed or still running job) is read without that
line, and a note says so.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import zlib
from pathlib import Path

from dpodiag.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"
GZIP_WBITS = zlib.MAX_WBITS | 16
UTF8_BOM = codecs.BOM_UTF8
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
BLOCK_BYTES = 1 << 16
# The first bytes of binary table files, which a text reader would misread.
BINARY_MAGIC = {b"PAR1": "parquet", b"ARROW1": "arrow"}
SUFFIX_OF_FORMAT = {"parquet": ".parquet", "arrow": ".arrow", "csv": ".csv", "jsonl": ".jsonl"}
FORMAT_NAMES = {"parquet": "a Parquet", "arrow": "an Arrow IPC", "csv": "a CSV", "jsonl": "a JSONL"}


def is_gzip(path: Path) -> bool:
    """Tell whether `path` is named as a gzip file."""
    return Path(path).name.lower().endswith(".gz")


def logical_path(path: Path) -> Path:
    """Return `path` without a trailing `.gz`: the name that gives the format of its content."""
    path = Path(path)
    return path.with_name(path.name[:-3]) if is_gzip(path) else path


def logical_suffix(path: Path) -> str:
    """Return the lower-case suffix of `logical_path(path)`, e.g. ".csv" for `pairs.csv.gz`."""
    return logical_path(path).suffix.lower()


def csv_separator(path: Path) -> str:
    """Return the field separator of a text table: a tab for `.tsv`, else a comma."""
    return "\t" if logical_suffix(path) == ".tsv" else ","


def read_head(path: Path, size: int) -> bytes:
    """Return up to `size` bytes from the start of the content (decompressed for `.gz`).

    Raises:
        OSError: the file cannot be opened.
        InputError: a `.gz` file is not valid gzip data.
    """
    if is_gzip(path):
        data, _ = _decompress(Path(path), limit=size + len(UTF8_BOM))
    else:
        with open(path, "rb") as stream:
            data = stream.read(size + len(UTF8_BOM))
    return data.removeprefix(UTF8_BOM)[:size]


def read_bytes(path: Path) -> bytes:
    """Return the whole content (decompressed for `.gz`), without a UTF-8 byte-order mark.

    A gzip stream that ends early gives the bytes before the cut (see `gzip_is_cut`).

    Raises:
        OSError: the file cannot be opened.
        InputError: a `.gz` file is not valid gzip data.
    """
    data = _decompress(Path(path))[0] if is_gzip(path) else Path(path).read_bytes()
    return data.removeprefix(UTF8_BOM)


def read_text(path: Path) -> str:
    """Return the content as text; bytes that are not UTF-8 become U+FFFD."""
    return read_bytes(path).decode("utf-8", errors="replace")


def gzip_is_cut(path: Path) -> bool:
    """Tell whether a `.gz` file ends before the end of its last gzip member."""
    return is_gzip(path) and not _decompress(Path(path))[1]


def _decompress(path: Path, limit: int | None = None) -> tuple[bytes, bool]:
    # Return the decompressed bytes (at least `limit` of them when given) and whether the last
    # member was complete. Concatenated members, as `cat a.gz b.gz` makes, are read in order.
    with open(path, "rb") as stream:
        if stream.read(2) != GZIP_MAGIC:
            raise InputError(path, "is named .gz but is not gzip data (it does not start with "
                             "the bytes 1f 8b)", "rename it without .gz, or compress it with gzip")
        stream.seek(0)
        output = bytearray()
        decompressor = zlib.decompressobj(GZIP_WBITS)
        started = False
        offset = 0
        while block := stream.read(BLOCK_BYTES):
            data = block
            while data:
                try:
                    output += decompressor.decompress(data)
                except zlib.error as error:
                    raise InputError(path, f"invalid gzip data in compressed bytes "
                                     f"{offset}-{offset + len(block)} ({error})",
                                     "compress the log again from its source, or pass the "
                                     "uncompressed file") from None
                started = True
                if not decompressor.eof:
                    break
                # A member ended; another one may follow. Bytes that are not a gzip header are
                # trailing padding, which gzip itself ignores too.
                data = decompressor.unused_data
                if not data.startswith(GZIP_MAGIC[:len(data)]):
                    return bytes(output), True
                decompressor = zlib.decompressobj(GZIP_WBITS)
                started = False
            offset += len(block)
            if limit is not None and len(output) >= limit:
                return bytes(output), True
    return bytes(output), decompressor.eof or not started


# Text tables (pair logs in CSV and JSONL)

def table_source(path: Path, fmt: str, notes: list[str] | None = None) -> Path | io.BytesIO:
    """Return what polars should scan for the pair table at `path`: the path itself, or its
    bytes after decompression and repair.

    The bytes are read into memory only in three cases: a `.gz` file, a JSONL file that starts
    with a UTF-8 byte-order mark, and a file that does not end with a line break. In the last
    case a writer may have cut the last line off, and a cut last line is dropped and described
    in `notes`.

    Raises:
        InputError: the file is UTF-16 encoded, or a `.gz` file is not valid gzip data.
    """
    path = Path(path)
    if fmt not in ("csv", "jsonl"):
        return io.BytesIO(read_bytes(path)) if is_gzip(path) else path
    if is_gzip(path):
        data = read_bytes(path)
    else:
        with open(path, "rb") as stream:
            head = stream.read(len(UTF8_BOM))
            stream.seek(0, io.SEEK_END)
            size = stream.tell()
            stream.seek(max(size - 1, 0))
            complete = stream.read(1) in (b"\n", b"")
        reject_utf16(path, head)
        if complete and not (fmt == "jsonl" and head == UTF8_BOM):
            return path
        data = read_bytes(path)
    reject_utf16(path, data[:2])
    return io.BytesIO(_drop_cut_last_line(path, fmt, data, notes))


def check_content(path: Path, fmt: str) -> None:
    """Raise when the first bytes of `path` show another table format than its name gives.

    A parquet or Arrow file starts with its magic bytes; a text table does not. A file renamed
    by mistake would otherwise fail later with a message about missing columns or a footer.

    Raises:
        InputError: the content is parquet or Arrow under a text name, or text under a parquet
            or Arrow name.
    """
    head = read_head(path, 8)
    magic, found = next(((magic, name) for magic, name in BINARY_MAGIC.items() if head.startswith(magic)),
                        (b"", None))
    if fmt in ("csv", "jsonl") and found:
        raise InputError(path, f"is {FORMAT_NAMES[found]} file (it starts with {magic.decode()}) but its name ends "
                         f"in {logical_suffix(path)}", f"rename it to end in {SUFFIX_OF_FORMAT[found]}")
    if fmt in ("parquet", "arrow") and found != fmt and head:
        if found:
            content, other = f"{FORMAT_NAMES[found]} file", found
        elif _is_text(head):
            other = "jsonl" if head.lstrip().startswith(b"{") else "csv"
            content = f"text that reads like {FORMAT_NAMES[other]} table"
        elif fmt == "parquet":
            content, other = "data of another format (it does not start with PAR1)", None
        else:
            return  # an Arrow stream or Feather file; the Arrow reader decides
        fix = f"rename it to end in {SUFFIX_OF_FORMAT[other]}" if other else f"pass a {fmt} file"
        raise InputError(path, f"is not {FORMAT_NAMES[fmt]} file: it contains {content}", fix)


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(byte >= 0x20 or byte in b"\t\r\n" for byte in head)


def reject_utf16(path: Path, head: bytes) -> None:
    """Raise when `head` starts with a UTF-16 byte-order mark: the readers expect UTF-8."""
    if head[:2] in UTF16_BOMS:
        raise InputError(path, "is encoded as UTF-16 (it starts with a UTF-16 byte-order mark)",
                         "save it as UTF-8, for example with `iconv -f UTF-16 -t UTF-8`")


def reject_other_separator(path: Path, head: bytes) -> None:
    """Raise when the header line of a CSV (TSV) has no comma (tab) but another separator."""
    header = head.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    expected = csv_separator(path)
    if expected in header:
        return
    names = {",": "','", ";": "';'", "|": "'|'", "\t": "a tab"}
    for other in (",", ";", "\t", "|"):
        if other in header and other != expected:
            missing = "tab" if expected == "\t" else names[expected]
            fix = ("rename it to end in .csv" if other == "," else
                   "save the file with ',' between fields (or with tabs and a .tsv name)")
            raise InputError(path, f"line 1: the header contains no {missing} but {names[other]}, "
                             f"so its fields are separated by {names[other]}", fix)


def _drop_cut_last_line(path: Path, fmt: str, data: bytes, notes: list[str] | None) -> bytes:
    # A last line without its line break is cut when it does not parse as a JSON object
    # (JSONL) or has fewer fields than the header (CSV). A cut inside the last CSV field looks
    # like a complete value, so such a line is kept and a note says that it may be cut.
    if not data or data.endswith(b"\n"):
        return data
    start = data.rfind(b"\n") + 1
    if start == 0:
        return data
    last = data[start:].decode("utf-8", errors="replace")
    line = data.count(b"\n") + 1
    if fmt == "jsonl":
        try:
            cut = not isinstance(json.loads(last), dict)
        except ValueError:
            cut = True
    else:
        separator = csv_separator(path)
        header = data[:data.find(b"\n")].decode("utf-8", errors="replace")
        try:
            width = len(next(csv.reader([header], delimiter=separator), []))
            cut = len(next(csv.reader([last], delimiter=separator), [])) < width
        except csv.Error:
            cut = False  # a line the csv module rejects; the CSV reader reports it
    if notes is not None and cut:
        notes.append(f"line {line}: the last line is cut off where the file ends (the log was "
                     "still being written, or its writer stopped); it was skipped")
    elif notes is not None:
        notes.append(f"line {line}: the file ends without a line break; its last line was "
                     "read, but its last value may be cut short if the log was still being "
                     "written")
    return data[:start] if cut else data


def table_error(path: Path, fmt: str, error: Exception) -> InputError:
    """Return the InputError for a table that polars or pyarrow cannot read: the line at fault
    where a text table has one."""
    text = str(error).strip()
    first = text.splitlines()[0][:200] if text else type(error).__name__
    lowered = text.lower()
    if "utf-8" in lowered or "utf8" in lowered:
        return _utf8_error(path)
    if fmt == "jsonl" and (line_error := jsonl_line_error(path)):
        return line_error
    if fmt == "csv" and "fields" in lowered:
        if ragged := ragged_csv_error(path, path, csv_separator(path)):
            return ragged
    if fmt == "parquet" and ("magic bytes" in lowered or "footer" in lowered):
        return InputError(path, "ends before its parquet footer (the writer crashed or is still "
                          "writing it)", "pass the file after its writer has closed it")
    return InputError(path, f"cannot read the {fmt} table ({first})",
                      f"check that it is a complete {fmt} file")


def jsonl_line_error(path: Path) -> InputError | None:
    """Return the error for the first line of a JSONL file that is not a JSON object, if any."""
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as error:
            reason = getattr(error, "msg", str(error)).removesuffix(" at").removesuffix(" starting")
            column = getattr(error, "colno", None)
            where = f", character {column}" if column else ""
            return InputError(path, f"line {number}{where}: not valid JSON ({reason.lower()})",
                              "repair or remove that line; every line must be one JSON object")
        if not isinstance(value, dict):
            return InputError(path, f"line {number}: a JSON {type(value).__name__} where an object "
                              "is expected", "write one JSON object per line")
    return None


def ragged_csv_error(path: Path, source: Path | io.BytesIO, separator: str) -> InputError | None:
    """Return the error for the first row of a CSV table with more or fewer fields than its
    header, if any. `source` is what was read in place of `path` (see `table_source`).

    Polars reads a row with too few fields as nulls in its last columns, so a reader calls this
    when a text table has nulls, to tell a broken line from values that are missing.
    """
    if isinstance(source, io.BytesIO):
        stream = io.StringIO(source.getvalue().decode("utf-8", errors="replace"))
    elif is_gzip(path):
        stream = io.StringIO(read_text(path))
    else:
        stream = open(source, encoding="utf-8-sig", errors="replace", newline="")
    with stream:
        reader = csv.reader(stream, delimiter=separator)
        width = len(next(reader, []))
        try:
            for row in reader:
                if row and len(row) != width:
                    return InputError(path, f"line {reader.line_num}: {len(row)} fields where the "
                                      f"header has {width}",
                                      "repair or remove that line (a cut line, or a value with an "
                                      "unquoted separator)")
        except csv.Error:
            return None  # a field over the csv module's size limit; polars read it
    return None


def _utf8_error(path: Path) -> InputError:
    # The error path reads the whole file once more to find the first byte that is not UTF-8.
    try:
        data = read_bytes(path)
        data.decode("utf-8")
    except (OSError, InputError):
        pass
    except UnicodeDecodeError as error:
        before = data[:error.start]
        line = before.count(b"\n") + 1
        column = error.start - before.rfind(b"\n")
        return InputError(path, f"line {line}, byte {column}: 0x{data[error.start]:02x} is not "
                          "UTF-8 (the file is in another encoding, such as Latin-1)",
                          "save the file as UTF-8, for example with `iconv -f latin1 -t utf-8`")
    return InputError(path, "is not valid UTF-8 text", "save the file as UTF-8")
