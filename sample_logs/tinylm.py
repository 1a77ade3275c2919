"""A tiny decoder-only transformer, the synthetic reversal task it learns, and its SFT warm-up.

The task: the prompt is 3 to 8 letters from a 16-letter alphabet. The chosen response is the
prompt reversed. The rejected response is a plausible wrong one: the prompt copied in its
original order, or the reversal with one symbol dropped, inserted or 1-2 symbols substituted.
So chosen and rejected lengths differ for the pairs with a dropped or inserted symbol.

A token sequence is [BOS] prompt [SEP] response [EOS], right-padded with PAD. The response tokens
are the response letters plus EOS, so a response of n letters has n + 1 tokens.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch import nn

LETTERS = "abcdefghijklmnop"
PAD, BOS, SEP, EOS = 0, 1, 2, 3
VOCAB_SIZE = 4 + len(LETTERS)
MIN_PROMPT_LETTERS = 3
MAX_PROMPT_LETTERS = 8
# BOS + prompt + SEP + a response one letter longer than the prompt + EOS.
MAX_SEQUENCE_LENGTH = 1 + MAX_PROMPT_LETTERS + 1 + (MAX_PROMPT_LETTERS + 1) + 1


@dataclass(frozen=True)
class Pair:
    """One preference pair of the reversal task, as letter strings."""

    example_id: str
    prompt: str
    chosen: str
    rejected: str


def corrupt_reversal(prompt: str, rng: random.Random) -> str:
    """Return a wrong response for `prompt`: a plain copy (40%) or a damaged reversal (20% each).

    A damaged reversal has one symbol dropped, one random symbol inserted, or 1-2 symbols
    replaced by other letters. A copy of a palindrome equals the reversal, so a palindrome gets
    a substitution instead.
    """
    reversed_prompt = prompt[::-1]
    kind = rng.choices(["copy", "drop", "insert", "substitute"], weights=[4, 2, 2, 2])[0]
    if kind == "copy" and prompt == reversed_prompt:
        kind = "substitute"

    # Copy in the original order.
    if kind == "copy":
        return prompt

    # Drop one symbol: one letter shorter than the chosen response.
    letters = list(reversed_prompt)
    if kind == "drop":
        del letters[rng.randrange(len(letters))]
        return "".join(letters)

    # Insert one random symbol: one letter longer.
    if kind == "insert":
        letters.insert(rng.randrange(len(letters) + 1), rng.choice(LETTERS))
        return "".join(letters)

    # Replace 1-2 positions by a different letter: same length.
    for position in rng.sample(range(len(letters)), k=rng.choice([1, 2])):
        letters[position] = rng.choice([c for c in LETTERS if c != letters[position]])
    return "".join(letters)


def make_pairs(count: int, rng: random.Random, id_prefix: str, exclude: set[str]) -> list[Pair]:
    """Draw `count` pairs with distinct prompts that are not in `exclude`."""
    pairs: list[Pair] = []
    seen = set(exclude)
    while len(pairs) < count:
        length = rng.randint(MIN_PROMPT_LETTERS, MAX_PROMPT_LETTERS)
        prompt = "".join(rng.choice(LETTERS) for _ in range(length))
        if prompt in seen:
            continue
        seen.add(prompt)
        example_id = f"{id_prefix}-{len(pairs):04d}"
        pairs.append(Pair(example_id, prompt, prompt[::-1], corrupt_reversal(prompt, rng)))
    return pairs


def encode(prompt: str, response: str) -> tuple[list[int], int]:
    """Return the token ids of one sequence and the index of its first response token."""
    prompt_ids = [4 + LETTERS.index(c) for c in prompt]
    response_ids = [4 + LETTERS.index(c) for c in response]
    ids = [BOS, *prompt_ids, SEP, *response_ids, EOS]
    return ids, len(prompt_ids) + 2


@dataclass
class SequenceBatch:
    """Right-padded token ids with per-position masks, all of shape (batch, length)."""

    ids: torch.Tensor
    response_mask: torch.Tensor
    """True at the response letters and the EOS of each row."""
    after_prompt_mask: torch.Tensor
    """True at every position after SEP, padding included."""

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(dim=1)


def collate_sequences(prompts: list[str], responses: list[str]) -> SequenceBatch:
    """Encode prompt/response pairs and right-pad them to the longest row."""
    encoded = [encode(p, r) for p, r in zip(prompts, responses)]
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), PAD, dtype=torch.long)
    response_mask = torch.zeros((len(encoded), width), dtype=torch.bool)
    after_prompt_mask = torch.zeros((len(encoded), width), dtype=torch.bool)
    for row, (sequence, start) in enumerate(encoded):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        response_mask[row, start : len(sequence)] = True
        after_prompt_mask[row, start:] = True
    return SequenceBatch(ids, response_mask, after_prompt_mask)


class Block(nn.Module):
    """Pre-norm transformer block: causal multi-head self-attention, then a GELU MLP."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.attention_out = nn.Linear(width, width)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        head_width = width // self.heads

        # Split q, k, v into heads: (3, batch, heads, length, head_width).
        qkv = self.qkv(self.attention_norm(x)).view(batch, length, 3, self.heads, head_width)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)

        # softmax(q k^T / sqrt(d) + causal mask) v, with dropout on the attention weights.
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(head_width)
        scores = scores.masked_fill(~causal_mask, float("-inf"))
        weights = self.dropout(scores.softmax(dim=-1))
        attended = (weights @ v).transpose(1, 2).reshape(batch, length, width)

        # Residual connections around attention and MLP.
        x = x + self.dropout(self.attention_out(attended))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class TinyLM(nn.Module):
    """Decoder-only transformer with learned positions and an output layer tied to the embedding.

    The defaults (width 64, 2 blocks, 4 heads) give 102,656 parameters. Right padding needs no
    attention mask, because under the causal mask no real token attends to the padding after it.
    """

    def __init__(self, width: int = 64, blocks: int = 2, heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB_SIZE, width)
        self.position_embedding = nn.Embedding(MAX_SEQUENCE_LENGTH, width)
        self.blocks = nn.ModuleList(Block(width, heads, dropout) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Return next-token logits of shape (batch, length, VOCAB_SIZE)."""
        length = ids.shape[1]
        positions = torch.arange(length)
        causal_mask = torch.ones(length, length, dtype=torch.bool).tril()
        x = self.dropout(self.token_embedding(ids) + self.position_embedding(positions))
        for block in self.blocks:
            x = block(x, causal_mask)
        return self.final_norm(x) @ self.token_embedding.weight.T


def token_logps(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Return log p(x_t | x_<t) for t = 1..length-1, shape (batch, length - 1), in float32."""
    logprobs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)


def sft_warmup(model: TinyLM, pairs: list[Pair], steps: int, batch_size: int,
               learning_rate: float, seed: int, snapshot_steps: tuple[int, ...] = ()
               ) -> dict[int, dict[str, torch.Tensor]]:
    """Train `model` on prompt+chosen and prompt+rejected sequences, mixed, with dropout on.

    The loss is the mean next-token negative log-likelihood over response tokens. Each pair's
    chosen and rejected responses are seen equally often, but the model still ranks the chosen
    reversal above most rejected responses, because random corruptions are harder to predict.

    Returns weight copies keyed by step: for each step in `snapshot_steps` the weights before
    that step's update (0 is the initial weights), and under the key `steps` the final weights.
    """
    # Every pair gives two SFT sequences, shuffled once per pass with a fixed seed.
    sequences = [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    order_rng = random.Random(seed)
    order: list[int] = []
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    model.train()

    for step in range(steps):
        if step in snapshot_steps:
            snapshots[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}

        # Refill the shuffled order when it runs short of one batch.
        if len(order) < batch_size:
            refill = list(range(len(sequences)))
            order_rng.shuffle(refill)
            order += refill
        chosen_indices, order = order[:batch_size], order[batch_size:]
        prompts, responses = zip(*(sequences[i] for i in chosen_indices))
        batch = collate_sequences(list(prompts), list(responses))

        # Token-mean NLL over the response tokens, one AdamW step.
        logps = token_logps(model(batch.ids), batch.ids)
        mask = batch.response_mask[:, 1:].float()
        loss = -(logps * mask).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    snapshots[steps] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return snapshots
