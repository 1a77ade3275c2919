"""`python -m dpodiag` and the installed `dpodiag` script run the CLI through `run`."""

from dpodiag.cli.signals import deferred_signals


def run() -> None:
    """Import the CLI with SIGINT and SIGTERM deferred, then run it.

    The imports take a second or more (torch, scipy). A signal during them exits, after them,
    with one line and the status that `main` gives. The modules that the commands import on
    first use are imported here for the same reason.
    """
    with deferred_signals():
        import dpodiag.pipeline  # noqa: F401
        import dpodiag.report  # noqa: F401
        from dpodiag.cli.main import main
    main()


if __name__ == "__main__":
    run()
