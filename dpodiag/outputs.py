"""Writing output files atomically, never overwriting without permission."""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

from dpodiag.errors import OutputError


def check_not_input(path: str | Path, inputs: list[str | Path]) -> None:
    """Raise when the output `path` is one of the inputs, which --force would destroy.

    Raises:
        OutputError: `path` names the same file as an input, or a file inside an input folder.
    """
    target = Path(path).resolve()
    for source in map(Path, inputs):
        source = source.resolve()
        if target == source or (source.is_dir() and source in target.parents):
            raise OutputError(f"{path}: is one of the inputs ({source}); choose another output name")


def check_output(path: str | Path, *, force: bool = False) -> Path:
    """Raise the OutputError that writing to `path` would raise before any data is written.

    Commands call it before a long computation, so that an existing file is reported at once.

    Raises:
        OutputError: `path` exists and `force` is false, is a folder, or sits below a file.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    if path.exists() and not force:
        raise OutputError(f"{path}: file exists; pass --force (force=True in Python) to overwrite it, "
                          "or choose another name")
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                raise OutputError(f"{path}: {folder} is a file, not a folder; choose another output path")
            break
    return path


def write_atomic(path: str | Path, data: bytes, *, force: bool = False) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename.

    A missing folder is created. An exception during the write (the one the CLI raises for
    SIGINT and SIGTERM included) leaves `path` as it was and removes the temporary file. A
    process killed outright (SIGKILL, power loss) may leave a hidden `.NAME.*.tmp` file beside
    `path`, but `path` itself is never partly written.

    Raises:
        OutputError: `path` exists and `force` is false, is a folder, or cannot be written.
    """
    path = check_output(path, force=force)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create folder {folder} ({exc.strerror}); "
                          "choose a folder you can write to") from None
    temporary = folder / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        # The name is fixed before the file exists, so an exception at any point up to the
        # rename (an interrupt included) reaches the cleanup below with the file named.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        with os.fdopen(os.open(temporary, flags, 0o666), "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = "free disk space or choose another folder"
        elif exc.errno == errno.EFBIG:
            fix = "raise the file size limit (ulimit -f) or choose another folder"
        else:
            fix = "choose a folder you can write to"
        raise OutputError(f"{path}: cannot write the file ({exc.strerror}); {fix}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return path
