"""`dpodiag report`: one self-contained HTML page that compares runs."""

from __future__ import annotations

from pathlib import Path

import click

from dpodiag.cli.options import run_options


@click.command("report")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write [default: reports/<first run>.html].")
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
@click.option("--title", help="Page title [default: the run names].")
@run_options
def report_command(runs, output, force, title, load_options, device):
    """Write an HTML report of RUN... (files or folders), all runs compared on one page."""
    from dpodiag.outputs import check_output
    from dpodiag.pipeline import diagnose, load
    from dpodiag.report import write_report

    # An existing output is reported before the runs are read, not after minutes of work.
    if output is not None:
        check_output(output, force=force)
    diagnosis = diagnose(load(list(runs), **load_options), device=device)
    if output is None:
        output = Path("reports") / f"{diagnosis.runs[0].name}.html"
    written = write_report(diagnosis, output, force=force, title=title)
    counts = {s: sum(1 for f in diagnosis.findings if f.severity == s) for s in ("error", "warning")}
    click.echo(f"wrote {written} ({written.stat().st_size / 1e6:.2f} MB): {len(diagnosis.runs)} run(s), "
               f"{counts['error']} error(s), {counts['warning']} warning(s)")
