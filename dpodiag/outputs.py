"""Writing output files atomically, never overwriting without permission."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from dpodiag.errors import OutputError


def write_atomic(path: str | Path, data: bytes, *, force: bool = False) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename.

    An interrupted write leaves no partial file at `path`.

    Raises:
        OutputError: `path` exists and `force` is false, or its folder cannot be written.
    """
    path = Path(path)
    if path.exists() and not force:
        raise OutputError(f"{path}: file exists; pass --force to overwrite it or choose another name")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write to folder {folder} ({exc.strerror})") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
