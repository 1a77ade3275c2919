"""`python -m dpodiag` runs the CLI."""

import sys

# Importing the CLI loads torch, which takes about a second; Ctrl-C during it exits quietly.
try:
    from dpodiag.cli.main import main
except KeyboardInterrupt:
    sys.stderr.write("dpodiag: interrupted\n")
    sys.exit(130)

main()
