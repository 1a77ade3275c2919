"""`python -m dpodiag` and the installed `dpodiag` script run the CLI through `run`."""

import sys

from dpodiag.cli.signals import deferred_signals

# Options that print text and exit before any command runs.
PRINT_ONLY_OPTIONS = {"-h", "--help", "--version"}


def run() -> None:
    """Import the CLI and the readers with SIGINT and SIGTERM deferred, then run it.

    A signal during the imports exits, after them, with one line and the status that `main`
    gives. The readers (polars, pyarrow, numpy) are not imported when the command line only
    requests help or the version, which need click alone. The commands import torch, which
    takes a second or more, with signals deferred in the same way: `check` and `report` once
    the first run is being read, so that the two overlap.
    """
    with deferred_signals():
        if not prints_only(sys.argv[1:]):
            import dpodiag.io  # noqa: F401
        from dpodiag.cli.main import main
    main()


def prints_only(arguments: list[str]) -> bool:
    """True when `arguments` contain no command or a help or version option before any `--`."""
    options = arguments[: arguments.index("--")] if "--" in arguments else arguments
    return not arguments or bool(PRINT_ONLY_OPTIONS & set(options))


if __name__ == "__main__":
    run()
