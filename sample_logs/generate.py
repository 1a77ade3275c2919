"""Train TinyLM with DPO-family losses on CPU and write one per-pair parquet log per run.

Usage: python sample_logs/generate.py [--out DIR] [--only NAME ...]

Every run starts from the same SFT warm-up of the same seeded model on the same data, and all
but `healthy` switch on one seeded bug through a `TrainerConfig` field. Each file carries a JSON
object under the parquet key-value metadata key "dpodiag" with what the run's config claims.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

if not __package__:
    # Run as a script: make the repository root importable so that `sample_logs` resolves.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sample_logs.tinylm import Pair, TinyLM, make_pairs, sft_warmup  # noqa: E402
from sample_logs.trainer import TrainerConfig, train_dpo  # noqa: E402

SEED = 0
TRAIN_PAIRS = 320
EVAL_PAIRS = 64
SFT_STEPS = 300
SFT_BATCH_SIZE = 32
SFT_LEARNING_RATE = 5e-3
# SFT step whose weights serve as the stale reference of reference-not-initial-policy.
EARLY_SFT_STEP = 30

POLICY_MODEL = "tinylm-sft"

# Arrow types of the log columns, in file order. Text columns are null on train rows.
COLUMN_TYPES = {
    "step": pa.int64(),
    "split": pa.string(),
    "example_id": pa.string(),
    "epoch": pa.float64(),
    "policy_chosen_logps": pa.float64(),
    "policy_rejected_logps": pa.float64(),
    "reference_chosen_logps": pa.float64(),
    "reference_rejected_logps": pa.float64(),
    "chosen_length": pa.int64(),
    "rejected_length": pa.int64(),
    "loss": pa.float64(),
    "prompt": pa.string(),
    "chosen": pa.string(),
    "rejected": pa.string(),
}


@dataclass(frozen=True)
class RunSpec:
    """One sample run: trainer config, reference weights and what the metadata records."""

    name: str
    config: TrainerConfig
    description: str
    seeded_bug: str | None = None
    reference: str | None = "sft"
    """"sft" (the policy's start), "early-sft" (SFT step EARLY_SFT_STEP) or None (no reference)."""
    recorded: dict = field(default_factory=dict)
    """Metadata values that differ from what the config implies."""


RUNS = [
    RunSpec("healthy", TrainerConfig(),
            "Correct DPO (sigmoid loss, beta 0.1) from the SFT model, reference = SFT model."),
    RunSpec("reference-tracks-policy", TrainerConfig(reference_is_policy=True),
            "Reference log-probs come from the live policy under torch.no_grad, so every "
            "log-ratio is 0 while the policy log-probs move.",
            seeded_bug="reference-tracks-policy"),
    RunSpec("reference-not-initial-policy", TrainerConfig(),
            f"The policy starts from the final SFT weights, the reference is the SFT snapshot "
            f"of step {EARLY_SFT_STEP} of {SFT_STEPS}, so step-0 log-ratios are not 0.",
            seeded_bug="reference-not-initial-policy", reference="early-sft",
            recorded={"reference_model": f"tinylm-sft-step{EARLY_SFT_STEP}"}),
    RunSpec("preference-inverted", TrainerConfig(loss_sign_flipped=True),
            "Sign error: the loss is softplus(+beta*h), so the policy learns to prefer the "
            "rejected response while the logged loss falls.",
            seeded_bug="preference-inverted"),
    RunSpec("beta-mismatch", TrainerConfig(hardcoded_loss_beta=0.5),
            "The loss uses a hard-coded beta of 0.5 while the config records beta 0.1.",
            seeded_bug="beta-mismatch"),
    RunSpec("nan-step", TrainerConfig(fp16_logits=True, activation_spike_step=45),
            "Logits pass through float16. At train step 45 an injected activation spike "
            "overflows them to inf, the policy log-probs and losses of that batch are NaN and "
            "the update is skipped, as a GradScaler does.",
            seeded_bug="nan-step"),
    RunSpec("reference-dropout", TrainerConfig(reference_in_train_mode=True),
            "The reference module is left in train mode, so it scores with dropout 0.1 and its "
            "log-probs are noisy.",
            seeded_bug="reference-dropout"),
    RunSpec("loss-scaled-by-accumulation",
            TrainerConfig(gradient_accumulation_steps=4, log_accumulation_scaled_loss=True),
            "Gradient accumulation over 4 micro-batches of 4 pairs; the logged train loss is "
            "the per-pair loss divided by 4. Training and the eval loss are correct.",
            seeded_bug="loss-scaled-by-accumulation"),
    RunSpec("ipo-recorded-as-sigmoid", TrainerConfig(loss_type="ipo"),
            "IPO loss (h_bar - 1/(2 beta))^2 with length-averaged log-ratios, beta 0.1, but the "
            "metadata records loss_type sigmoid.",
            seeded_bug="ipo-recorded-as-sigmoid", recorded={"loss_type": "sigmoid"}),
    RunSpec("padding-in-logps", TrainerConfig(mask_includes_padding=True),
            "The log-prob mask covers every position after the prompt, so the right padding "
            "of each batch is summed into the sequence log-probs.",
            seeded_bug="padding-in-logps"),
    RunSpec("chosen-rejected-swapped", TrainerConfig(pair_columns=("rejected", "chosen")),
            "The collator reads the rejected column as chosen and the chosen column as "
            "rejected; the log names each value by its dataset column.",
            seeded_bug="chosen-rejected-swapped"),
    RunSpec("simpo-reference-free", TrainerConfig(loss_type="simpo", beta=2.0, simpo_gamma=0.5),
            "SimPO without a reference: softplus(-(beta*(c/|c| - r/|r|) - gamma)), beta 2.0, "
            "gamma 0.5. The logps columns hold summed log-probs.",
            reference=None,
            recorded={"simpo_gamma": 0.5, "logps_normalisation": "sum"}),
]
RUN_NAMES = [spec.name for spec in RUNS]


def configure_torch() -> None:
    """Make every run reproducible: deterministic kernels, one thread, a fixed seed."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.manual_seed(SEED)


def build_data() -> tuple[list[Pair], list[Pair]]:
    """Draw the fixed eval set first, then train pairs with prompts not in the eval set."""
    rng = random.Random(SEED)
    eval_pairs = make_pairs(EVAL_PAIRS, rng, "eval", exclude=set())
    train_pairs = make_pairs(TRAIN_PAIRS, rng, "train", exclude={p.prompt for p in eval_pairs})
    return train_pairs, eval_pairs


def run_metadata(spec: RunSpec) -> dict:
    """Return the "dpodiag" metadata object: what the run's config claims, not what it does."""
    meta = {
        "beta": spec.config.beta,
        "loss_type": spec.config.loss_type,
        "label_smoothing": 0.0,
        "framework": "dpodiag-sample-trainer",
        "policy_model": POLICY_MODEL,
        "reference_model": POLICY_MODEL if spec.reference else None,
        "seeded_bug": spec.seeded_bug,
        "description": spec.description,
    }
    meta.update(spec.recorded)
    return meta


def write_log(rows: list[dict], meta: dict, path: Path) -> None:
    """Write the rows as a zstd-compressed parquet file with the metadata under "dpodiag"."""
    present = {key for row in rows for key in row}
    schema = pa.schema([(name, kind) for name, kind in COLUMN_TYPES.items() if name in present])
    table = pa.Table.from_pylist(rows, schema=schema)
    table = table.replace_schema_metadata({"dpodiag": json.dumps(meta)})
    pq.write_table(table, path, compression="zstd")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="folder for the parquet files (default: the folder of this script)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help=f"write only these runs; names: {', '.join(RUN_NAMES)}")
    args = parser.parse_args(argv)

    # Accept run names with or without the .parquet suffix.
    if args.only:
        args.only = [name.removesuffix(".parquet") for name in args.only]
        unknown = sorted(set(args.only) - set(RUN_NAMES))
        if unknown:
            parser.error(f"unknown run name(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(RUN_NAMES)}")
    if not args.out.is_dir():
        parser.error(f"output folder {args.out} not found; create it first")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure_torch()
    started = time.perf_counter()

    # Shared start: data, initial weights and the SFT warm-up with one early snapshot.
    train_pairs, eval_pairs = build_data()
    snapshots = sft_warmup(TinyLM(), train_pairs, SFT_STEPS, SFT_BATCH_SIZE, SFT_LEARNING_RATE,
                           SEED, snapshot_steps=(EARLY_SFT_STEP,))
    weights = {"sft": snapshots[SFT_STEPS], "early-sft": snapshots[EARLY_SFT_STEP], None: None}
    print(f"SFT warm-up: {SFT_STEPS} steps in {time.perf_counter() - started:.1f} s")

    # One DPO run per spec, each written as soon as it finishes.
    for spec in RUNS:
        if args.only and spec.name not in args.only:
            continue
        run_started = time.perf_counter()
        rows = train_dpo(spec.config, weights["sft"], weights[spec.reference],
                         train_pairs, eval_pairs)
        path = args.out / f"{spec.name}.parquet"
        write_log(rows, run_metadata(spec), path)
        print(f"{path}: {len(rows)} rows, {path.stat().st_size / 1024:.0f} KiB, "
              f"{time.perf_counter() - run_started:.1f} s")

    print(f"total: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
