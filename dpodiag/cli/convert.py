"""`dpodiag convert`: normalise any supported input to the canonical pair or step table."""

from __future__ import annotations

from pathlib import Path

import click

from dpodiag.cli.options import run_options
from dpodiag.errors import UsageError
from dpodiag.phrases import counted


@click.command("convert")
@click.argument("run", metavar="RUN")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Parquet file to write.")
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
@run_options
def convert_command(run, output, force, load_options, device):
    """Write RUN as one canonical parquet table, with its metadata under the key "dpodiag"."""
    from dpodiag.conversion import write_canonical
    from dpodiag.outputs import check_not_input, check_output
    from dpodiag.io import load

    if load_options["streaming"]:
        raise UsageError("convert reads the log into memory; --streaming applies to check, report "
                         "and inspect")
    if output.suffix.lower() not in (".parquet", ".pq"):
        raise UsageError(f"{output}: convert writes parquet; give the output a .parquet name")
    check_not_input(output, [run])
    check_output(output, force=force)
    runs = load([run], **{**load_options, "streaming": False})
    written = write_canonical(runs, output, force=force)
    rows = sum(r.table.height for r in runs)
    unit = {"pairs": "pair", "steps": "step record"}.get(runs[0].level, "row")
    click.echo(f"wrote {written}: {len(runs)} run(s), {counted(rows, unit)}")
