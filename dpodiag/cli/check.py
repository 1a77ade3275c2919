"""`dpodiag check`: findings for people (text), machines (JSON) or reviews (Markdown)."""

from __future__ import annotations

import sys

import click

from dpodiag.cli.options import run_options
from dpodiag.cli.signals import deferred_signals

FAIL_ON = ("error", "warning", "info", "never")


@click.command("check")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--format", "output_format", type=click.Choice(["text", "json", "markdown"]),
              default="text", show_default=True, help="Output format on stdout.")
@click.option("--fail-on", type=click.Choice(FAIL_ON), default="error", show_default=True,
              help="Exit with status 1 when a finding of this severity or worse exists.")
@click.option("-v", "--verbose", is_flag=True, help="Also list info findings (skipped checks, inferences).")
@run_options
def check_command(runs, output_format, fail_on, verbose, load_options, device):
    """Check RUN... (files or folders) and print the findings.

    Exit status: 0 when no finding reaches --fail-on, 1 when one does, 2 on invalid input.
    """
    from dpodiag.io import load

    # Runs are read, checked and released one at a time, so memory contains one run's pairs.
    runs = load(list(runs), defer=True, **load_options)
    # The first run is read on another thread while the pipeline imports torch.
    runs[0].read_ahead()
    with deferred_signals():
        from dpodiag import formats
        from dpodiag.pipeline import diagnose

    diagnosis = diagnose(runs, device=device, keep_pairs=False)
    if output_format == "json":
        sys.stdout.write(formats.to_json(diagnosis))
    elif output_format == "markdown":
        sys.stdout.write(formats.to_markdown(diagnosis))
    else:
        sys.stdout.write(formats.to_text(diagnosis, verbose=verbose))
    if fail_on != "never":
        ranks = FAIL_ON[: FAIL_ON.index(fail_on) + 1]
        if any(f.severity in ranks for f in diagnosis.findings):
            sys.exit(1)
