"""The exception tree. The CLI catches `DpodiagError` once and prints its message."""

from __future__ import annotations


class DpodiagError(Exception):
    """Base of every error dpodiag raises on purpose.

    The message is one line that names the file, the place (line, column, key) and what to do.
    `exit_code` is the process exit status the CLI uses for it.
    """

    exit_code = 2


class UsageError(DpodiagError):
    """An invalid command-line option or API argument."""


class InputError(DpodiagError):
    """An input file that cannot be read as a run log."""

    def __init__(self, path, problem: str, fix: str = ""):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        text = f"{self.path}: {problem}"
        if fix:
            text += f"; {fix}"
        super().__init__(text)


class NoDataError(InputError):
    """A readable input that contains no usable records."""


class OutputError(DpodiagError):
    """An output file that cannot be written (exists without --force, folder not creatable, disk full, ...)."""
