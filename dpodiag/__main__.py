"""`python -m dpodiag` runs the CLI."""

from dpodiag.cli.main import main

main()
