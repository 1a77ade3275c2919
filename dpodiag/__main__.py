"""`python -m dpodiag` runs the CLI."""

from dpodiag.cli.signals import deferred_signals

# The imports take a second or more (torch, scipy). SIGINT or SIGTERM during them exits, after
# them, with one line and the status that `main` gives. The modules that the commands import
# on first use are imported here for the same reason.
with deferred_signals():
    import dpodiag.pipeline  # noqa: F401
    import dpodiag.report  # noqa: F401
    from dpodiag.cli.main import main

main()
