"""Options shared by the commands that read runs."""

from __future__ import annotations

import functools

import click

from dpodiag.compute.device import DEVICE_CHOICES
from dpodiag.errors import UsageError


def parse_column_map(values: tuple[str, ...]) -> dict[str, str]:
    """Parse repeated ``--column canonical=theirs`` options."""
    mapping = {}
    for value in values:
        canonical, sep, theirs = value.partition("=")
        if not sep or not canonical or not theirs:
            raise UsageError(f"expected --column CANONICAL=THEIRS, got {value!r}")
        mapping[canonical.strip()] = theirs.strip()
    return mapping


def run_options(command):
    """Add the options that control how runs are read, and pass them on as `load_options`."""

    @click.option("--beta", type=float, help="Beta of the run(s); overrides every other source.")
    @click.option("--loss-type", help="Loss variant, e.g. sigmoid, cdpo, ipo, hinge, simpo; dpo, slic, "
                                      "rso and dpo_norm name sigmoid, hinge, hinge and sigmoid_norm.")
    @click.option("--label-smoothing", type=float, help="Label smoothing eps of cDPO/robust/EXO.")
    @click.option("--column", "columns", multiple=True, metavar="CANONICAL=THEIRS",
                  help="Map a column of the input to a canonical column; repeatable.")
    @click.option("--dialect", help="Name the trainer dialect of a step log instead of detecting it.")
    @click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True,
                  help="Torch device for the recompute; auto picks CUDA when present.")
    @click.option("--streaming", is_flag=True,
                  help="Scan pair logs in chunks with bounded memory [default: the DPODIAG_STREAMING "
                       "variable (1 or 0), else stream a log whose estimated in-memory size exceeds "
                       "40% of the available memory].")
    @click.option("--in-memory", is_flag=True, help="Read pair logs into memory (see --streaming).")
    @functools.wraps(command)
    def wrapper(*args, beta, loss_type, label_smoothing, columns, dialect, device, streaming, in_memory,
                **kwargs):
        if streaming and in_memory:
            raise UsageError("--streaming and --in-memory exclude each other; give one of them")
        if in_memory:
            streaming = False
        elif not streaming:
            streaming = None  # neither flag: the environment or the log's size decides
        flags = {"beta": beta, "loss_type": loss_type, "label_smoothing": label_smoothing}
        load_options = {"flags": {k: v for k, v in flags.items() if v is not None},
                        "column_map": parse_column_map(columns), "dialect": dialect,
                        "streaming": streaming}
        return command(*args, load_options=load_options, device=device, **kwargs)

    return wrapper
