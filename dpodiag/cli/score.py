"""`dpodiag score`: write a pair log by scoring a preference dataset with saved checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dpodiag.cli.signals import deferred_signals
from dpodiag.compute.device import DEVICE_CHOICES

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


@click.command("score")
@click.option("--policy", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Local folder of the policy checkpoint (safetensors weights).")
@click.option("--reference", type=click.Path(file_okay=False, path_type=Path),
              help="Local folder of the reference model; omit it for reference-free losses.")
@click.option("--dataset", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Preference dataset (.parquet or .jsonl) with prompt, chosen and rejected columns.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Pair log (.parquet) to write.")
@click.option("--tokenizer", type=click.Path(file_okay=False, path_type=Path),
              help="Tokenizer folder [default: the policy folder].")
@click.option("--step", type=click.IntRange(min=0),
              help="Step written on every row [default: N for a folder named checkpoint-N, else 0].")
@click.option("--split", default="eval", show_default=True, help="Split written on every row.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Sequences per forward pass.")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True,
              help="Torch device; auto picks CUDA when present.")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True,
              help="Weight dtype; auto keeps the checkpoint's own.")
@click.option("--beta", type=float, help="Beta of the training run, stored in the log's metadata.")
@click.option("--loss-type", help="Loss variant of the training run, stored in the metadata.")
@click.option("--label-smoothing", type=float, help="Label smoothing eps, stored in the metadata.")
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
def score_command(policy, reference, dataset, output, tokenizer, step, split, batch_size, device,
                  dtype, beta, loss_type, label_smoothing, force):
    """Score every pair of a preference dataset under the --policy and --reference checkpoints.

    Writes one row per pair with the summed response log-probs (nats), response lengths in
    tokens, the texts and an example_id. Weights are read from .safetensors files only.
    """
    from dpodiag.errors import OutputError
    from dpodiag.outputs import write_atomic
    from dpodiag.scoring import pair_log_bytes, score_metadata, score_pairs

    with deferred_signals():
        import torch  # noqa: F401  (scoring imports it on first use)

    if output.exists() and not force:
        raise OutputError(f"{output}: file exists; pass --force to overwrite it or choose another name")
    run_metadata, provenance = score_metadata(policy, reference, dataset, beta=beta, loss_type=loss_type,
                                              label_smoothing=label_smoothing)
    table = score_pairs(policy, dataset, reference=reference, tokenizer=tokenizer, batch_size=batch_size,
                        device=device, dtype=dtype, step=step, split=split, progress=_progress_printer())
    written = write_atomic(output, pair_log_bytes(table, run_metadata, provenance), force=force)
    click.echo(f"wrote {written}: {table.height} pairs scored at step {table['step'][0]}")


def _progress_printer():
    """Return a callback that redraws one progress line on a terminal, or None off a terminal."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        end = "\n" if done >= total else ""
        click.echo(f"\rscored {done}/{total} sequences", err=True, nl=False)
        if end:
            click.echo("", err=True)

    return show
