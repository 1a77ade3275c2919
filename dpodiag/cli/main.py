"""The `dpodiag` entry point: the command group and the one place errors are caught."""

from __future__ import annotations

import os
import signal
import sys

import click

from dpodiag import __version__
from dpodiag.cli.check import check_command
from dpodiag.cli.convert import convert_command
from dpodiag.cli.failures import is_out_of_memory, out_of_memory_message
from dpodiag.cli.inspect import inspect_command
from dpodiag.cli.report import report_command
from dpodiag.cli.score import score_command
from dpodiag.cli.signals import Stopped, exit_for_signal, handle_signals
from dpodiag.errors import DpodiagError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dpodiag")
def cli():
    """Offline diagnostics for DPO-family preference training runs."""


cli.add_command(check_command)
cli.add_command(report_command)
cli.add_command(inspect_command)
cli.add_command(convert_command)
cli.add_command(score_command)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; a DpodiagError becomes one line on stderr and its exit status.

    SIGINT exits with status 130 and SIGTERM with 143 (128 + the signal number), after the
    command has removed any partial output.
    """
    previous = handle_signals()
    try:
        _run(argv)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(argv: list[str] | None) -> None:
    try:
        cli.main(args=argv, prog_name="dpodiag", standalone_mode=False)
    except click.exceptions.Abort:
        exit_for_signal(signal.SIGINT)
    except Stopped as stop:
        exit_for_signal(stop.signum)
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
        exit_for_signal(signal.SIGINT)
    except Exception as exc:  # noqa: BLE001  (the last line of defence against a traceback)
        _exit_for_error(exc, argv)
    except BaseException as exc:
        # Polars reports a Rust panic as PanicException, which derives from BaseException.
        if type(exc).__name__ != "PanicException":
            raise
        _exit_for_error(exc, argv)
    sys.exit(0)


def _exit_for_error(exc: BaseException, argv: list[str] | None) -> None:
    """Exit with status 2 and one line for an allocation failure, else with status 3 as an
    internal error. With DPODIAG_DEBUG set, re-raise `exc` for the traceback."""
    if os.environ.get("DPODIAG_DEBUG"):
        raise exc
    if is_out_of_memory(exc):
        arguments = sys.argv[1:] if argv is None else argv
        streaming = "--streaming" in arguments or os.environ.get("DPODIAG_STREAMING") == "1"
        click.echo(f"dpodiag: error: {out_of_memory_message(exc, streaming)}", err=True)
        sys.exit(2)
    detail = (str(exc).strip().splitlines() or [""])[0][:300]
    click.echo(f"dpodiag: internal error: {type(exc).__name__}: {detail}; rerun with "
               "DPODIAG_DEBUG=1 for the traceback and report it", err=True)
    sys.exit(3)
