"""`dpodiag inspect`: what was detected in each run: format, dialect, columns, metadata, notes."""

from __future__ import annotations

import json
import sys

import click

from dpodiag.cli.options import run_options


@click.command("inspect")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--format", "output_format", type=click.Choice(["text", "json"]), default="text",
              show_default=True, help="Output format on stdout.")
@run_options
def inspect_command(runs, output_format, load_options, device):
    """Show how dpodiag reads RUN... (files or folders), without running the checks."""
    from dpodiag.inspection import describe_run, describe_text
    from dpodiag.io import load

    described = [describe_run(run) for run in load(list(runs), **load_options)]
    if output_format == "json":
        sys.stdout.write(json.dumps(described, indent=2, default=str) + "\n")
    else:
        sys.stdout.write("\n".join(describe_text(d) for d in described))
