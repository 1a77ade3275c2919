"""`dpodiag report`: one self-contained HTML page that compares runs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import click

from dpodiag.cli.options import run_options
from dpodiag.cli.signals import deferred_signals
from dpodiag.errors import UsageError

# Characters kept from a run name in the default output file name; others become "_".
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME_CHARS = 100


def default_output(run_name: str) -> Path:
    """Return reports/<run name>.html, with the name reduced to a plain file name.

    A run name comes from the input, so separators and leading dots are removed: the report
    stays inside reports/ whatever the name is.
    """
    name = _UNSAFE_NAME.sub("_", run_name).strip("._")[:MAX_NAME_CHARS] or "report"
    return Path("reports") / f"{name}.html"


@click.command("report")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("-o", "--output", type=click.Path(path_type=str),
              help="HTML file to write, or a folder (an existing one, or a path ending in '/') "
                   "to write <first run name>.html into [default: reports/<first run name>.html, "
                   "with characters other than letters, digits, '.', '_' and '-' replaced by '_'].")
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
@click.option("--title", help="Page title [default: the run names].")
@run_options
def report_command(runs, output, force, title, load_options, device):
    """Write an HTML report of RUN... (files or folders), all runs compared on one page."""
    from dpodiag.io import load
    from dpodiag.outputs import check_not_input, check_output

    folder = output is not None and (output.endswith(("/", os.sep)) or Path(output).is_dir())
    # An existing output is reported before the runs are read, not after minutes of work.
    if output is not None and not folder:
        check_not_input(output, list(runs))
        if Path(output).suffix.lower() not in (".html", ".htm"):
            raise UsageError(f"{output}: report writes an HTML page; give the output an .html "
                             "name, or a folder ending in '/'")
        check_output(output, force=force)
    # Runs are read one at a time, and each keeps only the pair columns the page reads. The first
    # run is read on another thread while the pipeline imports torch.
    loaded = load(list(runs), defer=True, **load_options)
    loaded[0].read_ahead()
    with deferred_signals():
        from dpodiag.pipeline import diagnose
        from dpodiag.report import PAIR_COLUMNS_READ, write_report

    diagnosis = diagnose(loaded, device=device, keep_columns=PAIR_COLUMNS_READ)
    if output is None:
        output = default_output(diagnosis.runs[0].name)
    elif folder:
        output = Path(output) / default_output(diagnosis.runs[0].name).name
        check_not_input(output, list(runs))
    written = write_report(diagnosis, output, force=force, title=title)
    counts = {s: sum(1 for f in diagnosis.findings if f.severity == s) for s in ("error", "warning")}
    click.echo(f"wrote {written} ({written.stat().st_size / 1e6:.2f} MB): {len(diagnosis.runs)} run(s), "
               f"{counts['error']} error(s), {counts['warning']} warning(s)")
