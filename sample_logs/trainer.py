"""A small DPO-family trainer for TinyLM that records one row per preference pair and step.

Each seeded bug is a field of `TrainerConfig` that switches one line of the trainer. The exception
is a wrong reference checkpoint, which is the `reference_weights` argument of `train_dpo`. With
every field at its default and the reference equal to the policy's start, the trainer is correct
DPO.

Notation: c and r are the policy's summed log-probs of the chosen and rejected responses, c0 and
r0 the reference's, |c| and |r| the response token counts, h = (c - c0) - (r - r0).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .tinylm import Pair, SequenceBatch, TinyLM, collate_sequences, token_logps

# Factor that the injected activation spike applies to the logits. Any logit of magnitude above
# 65504 / 1e6 = 0.066 then overflows to +-inf in the float16 cast.
SPIKE_FACTOR = 1e6


@dataclass(frozen=True)
class TrainerConfig:
    """Trainer settings. Each field after `seed` switches on one seeded bug."""

    loss_type: str = "sigmoid"
    """"sigmoid" (DPO), "ipo" or "simpo"."""
    beta: float = 0.1
    simpo_gamma: float = 0.5
    learning_rate: float = 5e-4
    num_steps: int = 80
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    eval_every: int = 10
    seed: int = 0

    reference_is_policy: bool = False
    """Score the reference with the policy itself under torch.no_grad."""
    reference_in_train_mode: bool = False
    """Skip the reference's eval() call, so it scores in train mode with dropout active."""
    loss_sign_flipped: bool = False
    """Use softplus(+beta * h) in place of softplus(-beta * h)."""
    hardcoded_loss_beta: float | None = None
    """Beta written into the loss in place of `beta`."""
    fp16_logits: bool = False
    """Round logits through float16, as a half-precision model returns them. log_softmax still
    runs in float32."""
    activation_spike_step: int | None = None
    """Train step whose policy logits get an activation spike of SPIKE_FACTOR."""
    log_accumulation_scaled_loss: bool = False
    """Record the per-pair loss after the division by gradient_accumulation_steps."""
    mask_includes_padding: bool = False
    """Sum log-probs over every position after the prompt, the padding included."""
    pair_columns: tuple[str, str] = ("chosen", "rejected")
    """Dataset columns that the collator reads as (chosen, rejected)."""


@dataclass
class PairBatch:
    """2B sequences: the first response column read for B pairs, then the second column."""

    pairs: list[Pair]
    sequences: SequenceBatch
    columns: tuple[str, str]
    """Dataset column names of the first and second halves, in that order."""


@dataclass
class PairScores:
    """Per-pair tensors of shape (B,). Index 0 of each tuple belongs to the first column read."""

    policy: tuple[torch.Tensor, torch.Tensor]
    reference: tuple[torch.Tensor, torch.Tensor] | None
    lengths: tuple[torch.Tensor, torch.Tensor]


def collate_pairs(pairs: list[Pair], config: TrainerConfig) -> PairBatch:
    """Read the two response columns in `config.pair_columns` order into one padded batch."""
    first, second = config.pair_columns
    prompts = [p.prompt for p in pairs] * 2
    responses = [getattr(p, first) for p in pairs] + [getattr(p, second) for p in pairs]
    return PairBatch(pairs, collate_sequences(prompts, responses), config.pair_columns)


def sequence_logps(model: TinyLM, sequences: SequenceBatch, config: TrainerConfig,
                   spike: bool = False) -> torch.Tensor:
    """Return sum_t log p(x_t | x_<t) over the response tokens of each row, shape (2B,).

    The first response token is included and the prompt is excluded. Padding is excluded
    unless `config.mask_includes_padding` is set.
    """
    # Forward pass, with the injected spike and the half-precision round trip where configured.
    logits = model(sequences.ids)
    if spike:
        logits = logits * SPIKE_FACTOR
    if config.fp16_logits:
        logits = logits.half().float()

    # Masked sum of the per-token log-probs. A NaN at any position of a row, masked or not,
    # makes the row's sum NaN, because NaN * 0 is NaN.
    mask = sequences.after_prompt_mask if config.mask_includes_padding else sequences.response_mask
    return (token_logps(logits, sequences.ids) * mask[:, 1:]).sum(dim=1)


def score_batch(policy: TinyLM, reference: TinyLM | None, batch: PairBatch,
                config: TrainerConfig, spike: bool = False) -> PairScores:
    """Score the batch with the policy (with gradient if enabled) and the reference (without)."""
    size = len(batch.pairs)
    policy_logps = sequence_logps(policy, batch.sequences, config, spike)
    lengths = batch.sequences.response_lengths
    reference_pair = None

    # The reference scores under no_grad. With reference_is_policy the live policy does, so
    # every log-ratio is exactly 0.
    if reference is not None or config.reference_is_policy:
        with torch.no_grad():
            if config.reference_is_policy:
                reference_logps = sequence_logps(policy, batch.sequences, config)
            else:
                reference_logps = sequence_logps(reference, batch.sequences, config)
        reference_pair = (reference_logps[:size], reference_logps[size:])

    return PairScores(
        policy=(policy_logps[:size], policy_logps[size:]),
        reference=reference_pair,
        lengths=(lengths[:size], lengths[size:]),
    )


def pair_losses(scores: PairScores, config: TrainerConfig) -> torch.Tensor:
    """Return the per-pair loss, shape (B,), taking the first column read as chosen.

    sigmoid: softplus(-beta * h), the DPO loss -log sigmoid(beta * h).
    ipo:     (h_bar - 1 / (2 beta))^2 with h_bar = (c - c0) / |c| - (r - r0) / |r|.
    simpo:   softplus(-(beta * (c / |c| - r / |r|) - gamma)), without a reference.
    """
    chosen, rejected = scores.policy
    chosen_length, rejected_length = (length.float() for length in scores.lengths)
    beta = config.beta if config.hardcoded_loss_beta is None else config.hardcoded_loss_beta

    # SimPO: length-averaged log-probs and a target margin gamma.
    if config.loss_type == "simpo":
        margin = beta * (chosen / chosen_length - rejected / rejected_length) - config.simpo_gamma
        return F.softplus(-margin)

    # IPO: squared distance of the length-averaged log-ratio margin from 1 / (2 beta).
    reference_chosen, reference_rejected = scores.reference
    if config.loss_type == "ipo":
        margin = ((chosen - reference_chosen) / chosen_length
                  - (rejected - reference_rejected) / rejected_length)
        return (margin - 1 / (2 * beta)) ** 2

    # DPO: softplus(-beta * h), or softplus(+beta * h) with the flipped sign.
    if config.loss_type != "sigmoid":
        raise ValueError(f"invalid loss_type {config.loss_type!r}: expected sigmoid, ipo or simpo")
    logits = beta * ((chosen - reference_chosen) - (rejected - reference_rejected))
    return F.softplus(logits) if config.loss_sign_flipped else F.softplus(-logits)


def pair_rows(batch: PairBatch, scores: PairScores, losses: torch.Tensor, step: int,
              split: str, epoch: float) -> list[dict]:
    """Build one log row per pair, naming each value by the dataset column it was read from."""
    position = {name: index for index, name in enumerate(batch.columns)}
    chosen, rejected = position["chosen"], position["rejected"]
    values = {
        "policy_chosen_logps": scores.policy[chosen].tolist(),
        "policy_rejected_logps": scores.policy[rejected].tolist(),
        "chosen_length": scores.lengths[chosen].tolist(),
        "rejected_length": scores.lengths[rejected].tolist(),
        "loss": losses.tolist(),
    }
    if scores.reference is not None:
        values["reference_chosen_logps"] = scores.reference[chosen].tolist()
        values["reference_rejected_logps"] = scores.reference[rejected].tolist()

    rows = []
    for index, pair in enumerate(batch.pairs):
        row = {"step": step, "split": split, "example_id": pair.example_id, "epoch": epoch}
        row.update({name: column[index] for name, column in values.items()})
        if split == "eval":
            row.update(prompt=pair.prompt, chosen=pair.chosen, rejected=pair.rejected)
        rows.append(row)
    return rows


def evaluate(policy: TinyLM, reference: TinyLM | None, pairs: list[Pair],
             config: TrainerConfig, step: int, epoch: float) -> list[dict]:
    """Score the whole eval set in one batch without gradient and return its rows."""
    with torch.no_grad():
        batch = collate_pairs(pairs, config)
        scores = score_batch(policy, reference, batch, config)
        losses = pair_losses(scores, config)
    return pair_rows(batch, scores, losses, step, "eval", epoch)


def train_step(policy: TinyLM, reference: TinyLM | None, optimizer: torch.optim.Optimizer,
               pairs: list[Pair], config: TrainerConfig, step: int, epoch: float) -> list[dict]:
    """Run one optimizer step over `pairs` in gradient_accumulation_steps micro-batches.

    The update is skipped when a gradient is not finite, as torch.amp.GradScaler skips it.
    """
    accumulation = config.gradient_accumulation_steps
    micro_size = len(pairs) // accumulation
    spike = step == config.activation_spike_step
    optimizer.zero_grad()
    rows = []

    for start in range(0, len(pairs), micro_size):
        # Score one micro-batch and backpropagate its share of the batch-mean loss.
        batch = collate_pairs(pairs[start : start + micro_size], config)
        scores = score_batch(policy, reference, batch, config, spike)
        losses = pair_losses(scores, config)
        scaled_losses = losses / accumulation
        scaled_losses.mean().backward()

        # Record the per-pair loss, or its scaled value where the trainer logs that one.
        logged = scaled_losses if config.log_accumulation_scaled_loss else losses
        rows += pair_rows(batch, scores, logged.detach(), step, "train", epoch)

    # Apply the update only when every gradient is finite.
    gradients = [p.grad for p in policy.parameters() if p.grad is not None]
    if all(torch.isfinite(g).all() for g in gradients):
        optimizer.step()
    return rows


def batch_schedule(count: int, batch_size: int, num_steps: int, seed: int) -> list[list[int]]:
    """Return the pair indices of each step: a fixed shuffle per epoch, whole batches only."""
    steps_per_epoch = count // batch_size
    schedule: list[list[int]] = []
    for epoch in range(math.ceil(num_steps / steps_per_epoch)):
        order = list(range(count))
        random.Random(seed * 1000 + epoch).shuffle(order)
        schedule += [order[i * batch_size : (i + 1) * batch_size] for i in range(steps_per_epoch)]
    return schedule[:num_steps]


def train_dpo(config: TrainerConfig, policy_weights: dict, reference_weights: dict | None,
              train_pairs: list[Pair], eval_pairs: list[Pair]) -> list[dict]:
    """Train a policy from `policy_weights` and return the per-pair log rows.

    Train rows at step s are scored before update s. Eval rows come at every eval_every steps
    and once more at step num_steps, after the last update. The policy runs without dropout.
    `reference_weights` None means a reference-free loss.
    """
    if config.batch_size % config.gradient_accumulation_steps:
        raise ValueError(f"invalid batch_size {config.batch_size}: expected a multiple of "
                         f"gradient_accumulation_steps {config.gradient_accumulation_steps}")
    torch.manual_seed(config.seed)

    # Policy: trainable, dropout off for the loss forward passes.
    policy = TinyLM()
    policy.load_state_dict(policy_weights)
    policy.eval()

    # Reference: frozen and in eval mode. Without the eval() call a new module stays in train
    # mode, so its dropout is active.
    reference = None
    if reference_weights is not None:
        reference = TinyLM()
        reference.load_state_dict(reference_weights)
        reference.requires_grad_(False)
        if not config.reference_in_train_mode:
            reference.eval()

    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    schedule = batch_schedule(len(train_pairs), config.batch_size, config.num_steps, config.seed)
    steps_per_epoch = len(train_pairs) // config.batch_size
    rows: list[dict] = []

    for step, indices in enumerate(schedule):
        epoch = step / steps_per_epoch
        if step % config.eval_every == 0:
            rows += evaluate(policy, reference, eval_pairs, config, step, epoch)
        batch_pairs = [train_pairs[i] for i in indices]
        rows += train_step(policy, reference, optimizer, batch_pairs, config, step, epoch)

    final_step = len(schedule)
    final_epoch = final_step / steps_per_epoch
    rows += evaluate(policy, reference, eval_pairs, config, final_step, final_epoch)
    return rows
