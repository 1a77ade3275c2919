"""A tiny randomly initialised Llama and a character-level tokenizer, built locally for tests.

Nothing is downloaded: the tokenizer comes from the `tokenizers` library and the model from a
LlamaConfig with 5,568 parameters. The preference task is the reversal task of
sample_logs/tinylm.py: the chosen response reverses the prompt, the rejected one copies it.
"""

from __future__ import annotations

import random
from pathlib import Path

LETTERS = "abcdefghijklmnop"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def char_tokenizer():
    """Return a PreTrainedTokenizerFast with one token per character and no chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + list(LETTERS + " :>"))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def tiny_llama(tokenizer, seed: int = 0, width: int = 16):
    """Return a randomly initialised 2-layer Llama of `width` for `tokenizer`'s vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Save a tiny Llama and its tokenizer to `folder` as safetensors and JSON; return `folder`."""
    tokenizer = char_tokenizer()
    model = tiny_llama(tokenizer, seed)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return Path(folder)


def reversal_pairs(count: int, seed: int = 0) -> dict[str, list[str]]:
    """Return `count` preference pairs as columns prompt, chosen, rejected."""
    rng = random.Random(seed)
    columns: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    for _ in range(count):
        word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 7)))
        columns["prompt"].append(f"{word}>")
        columns["chosen"].append(word[::-1])
        columns["rejected"].append(word if word != word[::-1] else word[1:])
    return columns
