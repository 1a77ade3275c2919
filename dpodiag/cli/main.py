"""The `dpodiag` entry point: the command group and the one place errors are caught."""

from __future__ import annotations

import os
import sys

import click

from dpodiag import __version__
from dpodiag.cli.check import check_command
from dpodiag.cli.convert import convert_command
from dpodiag.cli.inspect import inspect_command
from dpodiag.cli.report import report_command
from dpodiag.errors import DpodiagError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dpodiag")
def cli():
    """Offline diagnostics for DPO-family preference training runs."""


cli.add_command(check_command)
cli.add_command(report_command)
cli.add_command(inspect_command)
cli.add_command(convert_command)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a DpodiagError becomes one line on stderr and its exit status."""
    try:
        cli.main(args=argv, prog_name="dpodiag", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("dpodiag: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "dpodiag"
        click.echo(f"dpodiag: error: {exc.format_message()} (see '{command} --help')", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"dpodiag: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except DpodiagError as exc:
        click.echo(f"dpodiag: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("dpodiag: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001  (the last line of defence against a traceback)
        if os.environ.get("DPODIAG_DEBUG"):
            raise
        click.echo(f"dpodiag: internal error: {type(exc).__name__}: {exc}; rerun with "
                   "DPODIAG_DEBUG=1 for the traceback and report it", err=True)
        sys.exit(3)
    sys.exit(0)
