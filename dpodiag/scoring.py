"""Offline scoring: a pair log from a policy checkpoint, a reference and a preference dataset.

For users who kept checkpoints but no per-pair log. Each sequence log-prob is the sum of
log p(token | tokens before it) over the response tokens, in nats, as DPO trainers compute it.

Tokenization, the same for every tokenizer:
- A string prompt and string responses are concatenated as text, prompt + response. A response
  that does not end with the tokenizer's EOS token gets it appended, as TRL does.
- A conversational pair (prompt and responses as lists of {"role", "content"} messages) is
  rendered with the tokenizer's chat template: the prompt with the generation prompt, and the
  prompt followed by the response messages. Nothing is appended.
- The response starts at the first token where the tokenized prompt and the tokenized prompt +
  response differ. That is after the prompt's last token, or earlier where a token merges
  across the boundary, so the first response token is always counted and the prompt never is.
  Padding is never counted.

Models are loaded from local folders with safetensors weights only (``use_safetensors=True``,
``trust_remote_code=False``); pickle-based weights (.bin, .pt, .pth, .ckpt, .pkl) are rejected.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from dpodiag.errors import InputError, UsageError
from dpodiag.io.metadata import validate_meta

DATASET_COLUMNS = ("prompt", "chosen", "rejected")
ID_COLUMNS = ("example_id", "id", "pair_id", "index", "idx", "uid")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
DTYPES = ("auto", "float32", "bfloat16", "float16")
# Response-token positions scored per log_softmax call; bounds the float32 copy of the logits
# at TOKEN_CHUNK x vocabulary size x 4 bytes.
TOKEN_CHUNK = 2048


def score_pairs(policy: str | Path, dataset: str | Path, *, reference: str | Path | None = None,
                tokenizer: str | Path | None = None, batch_size: int = 8, device: str = "auto",
                dtype: str = "auto", step: int | None = None, split: str = "eval",
                progress: Callable[[int, int], None] | None = None) -> pl.DataFrame:
    """Score every pair of `dataset` under `policy` (and `reference`) and return a pair table.

    The table has the canonical pair columns step, split, example_id, policy_chosen_logps,
    policy_rejected_logps, reference_chosen_logps and reference_rejected_logps (with a
    reference), chosen_length and rejected_length (response tokens), and the texts prompt,
    chosen and rejected. `step` defaults to N for a folder named checkpoint-N, else 0.
    `progress` is called after each batch with the sequences scored so far and their total
    (two per pair and model).

    Raises:
        UsageError: an invalid option, or a model or tokenizer folder that cannot be used.
        InputError: the dataset cannot be read or lacks the prompt, chosen or rejected column.
    """
    import torch

    from dpodiag.compute.device import resolve_device

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"expected --batch-size to be an integer >= 1, got {batch_size!r}")
    if dtype not in DTYPES:
        raise UsageError(f"expected --dtype to be one of {', '.join(DTYPES)}, got {dtype!r}")
    torch_device = resolve_device(device)
    pairs = read_preference_dataset(Path(dataset))
    tokenizer_object = load_tokenizer(Path(tokenizer or policy))
    encoded = [encode_pair(tokenizer_object, pair) for pair in pairs["rows"]]

    columns: dict[str, Any] = {
        "step": [_default_step(Path(policy)) if step is None else step] * len(encoded),
        "split": [split] * len(encoded),
        "example_id": pairs["example_id"],
    }
    models = {"policy": policy} if reference is None else {"policy": policy, "reference": reference}
    for folder in models.values():
        check_safetensors_folder(Path(folder))
    counter = _ProgressCounter(progress, total=2 * len(encoded) * len(models))
    for role, folder in models.items():
        model = load_model(Path(folder), dtype, torch_device)
        check_context_length(model, encoded, pairs["example_id"], Path(folder))
        chosen, rejected = score_encoded(model, encoded, tokenizer_object, batch_size, torch_device, counter)
        columns[f"{role}_chosen_logps"] = chosen
        columns[f"{role}_rejected_logps"] = rejected
        del model
        if torch_device.type == "cuda":
            torch.cuda.empty_cache()

    columns["chosen_length"] = [float(len(pair.chosen_ids) - pair.chosen_start) for pair in encoded]
    columns["rejected_length"] = [float(len(pair.rejected_ids) - pair.rejected_start) for pair in encoded]
    for name in DATASET_COLUMNS:
        columns[name] = [_text(row[name]) for row in pairs["rows"]]
    return pl.DataFrame(columns)


def score_metadata(policy: str | Path, reference: str | Path | None, dataset: str | Path,
                   **values) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the run metadata for the "dpodiag" key and this pass's provenance.

    The policy folder goes into the provenance, not the run metadata, so that score files of
    several checkpoints of one run carry equal run metadata and read as one run.

    Raises:
        UsageError: beta, loss_type or label_smoothing is invalid.
    """
    run = validate_meta({**values, "framework": "dpodiag score", "logps_normalisation": "sum",
                         "reference_model": str(reference) if reference is not None else None},
                        "dpodiag score", UsageError)
    provenance = {"policy": str(policy), "reference": None if reference is None else str(reference),
                  "dataset": str(dataset)}
    return run, provenance


# Reading ---------------------------------------------------------------------------------


def read_preference_dataset(path: Path) -> dict[str, Any]:
    """Read a parquet or JSONL preference dataset with prompt, chosen and rejected columns.

    Returns {"rows": list of dicts with the three columns, "example_id": list of str}. The ids
    come from an example_id, id, pair_id, index, idx or uid column, else the row number.

    Raises:
        InputError: the file is missing, unreadable, empty or lacks a column.
    """
    if not path.is_file():
        raise InputError(path, "no such file", "pass a .parquet or .jsonl preference dataset")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pl.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            frame = pl.read_ndjson(path, infer_schema_length=None)
        else:
            raise InputError(path, f"unsupported dataset format {suffix!r}", "pass a .parquet or .jsonl file")
    except (OSError, pl.exceptions.PolarsError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"cannot read the dataset ({first_line})",
                         "check that it is a complete parquet file or one JSON object per line") from None

    missing = [name for name in DATASET_COLUMNS if name not in frame.columns]
    if missing:
        raise InputError(path, f"missing column {missing[0]!r}", f"the dataset needs the columns "
                         f"{', '.join(DATASET_COLUMNS)}; it has {', '.join(frame.columns[:20])}")
    if frame.height == 0:
        raise InputError(path, "the dataset has no rows", "pass a dataset with at least one pair")
    rows = frame.select(DATASET_COLUMNS).to_dicts()
    for index, row in enumerate(rows):
        for name in DATASET_COLUMNS:
            if not _is_text(row[name]) and not _is_messages(row[name]):
                raise InputError(path, f"row {index + 1}, column {name!r}: expected a string or a list "
                                 f"of {{role, content}} messages, got {str(row[name])[:40]!r}",
                                 "fix the row or drop it")

    id_column = next((name for name in ID_COLUMNS if name in frame.columns), None)
    ids = ([str(value) for value in frame.get_column(id_column).to_list()] if id_column
           else [str(index) for index in range(frame.height)])
    return {"rows": rows, "example_id": ids}


def load_tokenizer(folder: Path):
    """Load the tokenizer in `folder` with transformers, from local files only.

    Raises:
        UsageError: transformers is missing, or `folder` contains no loadable tokenizer.
    """
    transformers = _transformers()
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder; pass a local folder with the tokenizer files")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True,
                                                               trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{folder}: cannot load a tokenizer ({_first_line(exc)}); pass --tokenizer "
                         "with a folder that contains tokenizer.json or the tokenizer's files") from None
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise UsageError(f"{folder}: the tokenizer has neither a pad nor an EOS token, so batches "
                         "cannot be padded; set pad_token in its tokenizer_config.json")
    return tokenizer


def check_safetensors_folder(folder: Path) -> None:
    """Raise UsageError unless `folder` is a model folder with safetensors weights.

    Pickle-based weights can run code when loaded, so they are never read.
    """
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such model folder; pass a local folder saved with "
                         "save_pretrained(..., safe_serialization=True)")
    files = [path.name for path in folder.iterdir() if path.is_file()]
    if any(name.endswith(".safetensors") for name in files):
        return
    pickled = sorted(name for name in files if name.lower().endswith(PICKLE_SUFFIXES))
    if pickled:
        raise UsageError(f"{folder}: contains pickle-based weights ({pickled[0]}) and no .safetensors "
                         "file; dpodiag never unpickles weights, so convert them first with "
                         "model.save_pretrained(folder, safe_serialization=True) in a trusted environment")
    raise UsageError(f"{folder}: no .safetensors weights found; pass a folder saved with save_pretrained")


def load_model(folder: Path, dtype: str, device):
    """Load a causal LM from `folder` (safetensors only) in eval mode on `device`."""
    import torch

    transformers = _transformers()
    check_safetensors_folder(folder)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, use_safetensors=True, local_files_only=True, trust_remote_code=False, dtype=torch_dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{folder}: cannot load a causal language model ({_first_line(exc)})") from None
    return model.to(device).eval()


def check_context_length(model, encoded: list[EncodedPair], example_ids: list[str], folder: Path) -> None:
    """Raise UsageError when a sequence is longer than the model's max_position_embeddings.

    Sequences are never truncated, because a truncated response has a different log-prob.
    """
    limit = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return
    for pair, example_id in zip(encoded, example_ids):
        longest = max(len(pair.chosen_ids), len(pair.rejected_ids))
        if longest > limit:
            raise UsageError(f"pair {example_id!r} has {longest} tokens, more than the "
                             f"max_position_embeddings {limit} of {folder}; drop or shorten the pair")


# Tokenizing ------------------------------------------------------------------------------


class EncodedPair:
    """Token ids of prompt + chosen and prompt + rejected, and where each response starts."""

    __slots__ = ("chosen_ids", "chosen_start", "rejected_ids", "rejected_start")

    def __init__(self, chosen_ids: list[int], chosen_start: int, rejected_ids: list[int], rejected_start: int):
        self.chosen_ids = chosen_ids
        self.chosen_start = chosen_start
        self.rejected_ids = rejected_ids
        self.rejected_start = rejected_start


def encode_pair(tokenizer, row: dict[str, Any]) -> EncodedPair:
    """Tokenize one pair as the module docstring describes.

    Raises:
        UsageError: a conversational pair with a tokenizer that has no chat template, or a
            response that adds no token.
    """
    prompt_ids, chosen_ids = _encode(tokenizer, row["prompt"], row["chosen"])
    _, rejected_ids = _encode(tokenizer, row["prompt"], row["rejected"])
    chosen_start = response_start(prompt_ids, chosen_ids)
    rejected_start = response_start(prompt_ids, rejected_ids)
    if chosen_start == 0 or rejected_start == 0:
        # Position 0 has no preceding token to predict it from.
        raise UsageError(f"prompt {_text(row['prompt'])[:40]!r} encodes to no token, so the first response "
                         "token has no context; give every pair a non-empty prompt")
    if chosen_start >= len(chosen_ids) or rejected_start >= len(rejected_ids):
        raise UsageError(f"a response to prompt {_text(row['prompt'])[:40]!r} encodes to no token; drop "
                         "pairs with empty responses")
    return EncodedPair(chosen_ids, chosen_start, rejected_ids, rejected_start)


def response_start(prompt_ids: list[int], full_ids: list[int]) -> int:
    """Return the index of the first response token: the length of the common prefix."""
    length = 0
    for prompt_token, full_token in zip(prompt_ids, full_ids):
        if prompt_token != full_token:
            break
        length += 1
    return length


def _encode(tokenizer, prompt, response) -> tuple[list[int], list[int]]:
    """Return the token ids of the prompt alone and of prompt + response."""
    if _is_messages(prompt) or _is_messages(response):
        if not tokenizer.chat_template:
            raise UsageError("the dataset contains conversations (lists of messages) but the tokenizer has no "
                             "chat template; pass --tokenizer with one, or store prompt and responses as text")
        prompt_messages = prompt if _is_messages(prompt) else [{"role": "user", "content": prompt}]
        response_messages = response if _is_messages(response) else [{"role": "assistant", "content": response}]
        prompt_text = tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(prompt_messages + response_messages, tokenize=False)
        return (tokenizer(prompt_text, add_special_tokens=False)["input_ids"],
                tokenizer(full_text, add_special_tokens=False)["input_ids"])

    eos = tokenizer.eos_token
    if eos and not response.endswith(eos):
        response = response + eos
    return tokenizer(prompt)["input_ids"], tokenizer(prompt + response)["input_ids"]


# Scoring ---------------------------------------------------------------------------------


def score_encoded(model, encoded: list[EncodedPair], tokenizer, batch_size: int, device,
                  progress: Callable[[int], None] | None = None) -> tuple[list[float], list[float]]:
    """Return the summed response log-probs of the chosen and of the rejected sequences.

    `progress` is called with the number of sequences in each batch once it is scored.
    """
    import torch

    sequences = [(pair.chosen_ids, pair.chosen_start) for pair in encoded] + \
                [(pair.rejected_ids, pair.rejected_start) for pair in encoded]
    # Score the longest sequences first, so a batch contains sequences of similar length.
    order = sorted(range(len(sequences)), key=lambda index: -len(sequences[index][0]))
    totals = np.zeros(len(sequences), dtype=np.float64)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            ids, attention, response = _pad_batch([sequences[i] for i in indices], pad_id, device)
            logits = model(input_ids=ids, attention_mask=attention).logits
            totals[indices] = _masked_logps(logits, ids, response).cpu().numpy()
            if progress is not None:
                progress(len(indices))
    return totals[: len(encoded)].tolist(), totals[len(encoded):].tolist()


def _pad_batch(sequences: list[tuple[list[int], int]], pad_id: int, device):
    """Right-pad token ids; return ids, the attention mask and the response-token mask."""
    import torch

    width = max(len(ids) for ids, _ in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), width), dtype=torch.long)
    response = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (tokens, start) in enumerate(sequences):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        attention[row, : len(tokens)] = 1
        response[row, start : len(tokens)] = True
    return ids.to(device), attention.to(device), response.to(device)


def _masked_logps(logits, ids, response):
    """Return sum over response positions t of log_softmax(logits[t - 1])[ids[t]], in float64.

    Only response positions are converted to float32, TOKEN_CHUNK at a time.
    """
    import torch

    target_mask = response[:, 1:]
    rows = torch.nonzero(target_mask, as_tuple=True)[0]
    selected_logits = logits[:, :-1][target_mask]
    targets = ids[:, 1:][target_mask]
    token_logps = torch.empty(targets.shape[0], dtype=torch.float64, device=logits.device)
    for start in range(0, targets.shape[0], TOKEN_CHUNK):
        chunk = selected_logits[start : start + TOKEN_CHUNK].float().log_softmax(dim=-1)
        picked = chunk.gather(-1, targets[start : start + TOKEN_CHUNK, None]).squeeze(-1)
        token_logps[start : start + TOKEN_CHUNK] = picked.double()
    totals = torch.zeros(ids.shape[0], dtype=torch.float64, device=logits.device)
    return totals.index_add_(0, rows, token_logps)


# Writing ---------------------------------------------------------------------------------


def pair_log_bytes(table: pl.DataFrame, run_metadata: dict[str, Any], provenance: dict[str, Any]) -> bytes:
    """Serialise a scored pair table as parquet with the run metadata under "dpodiag"."""
    import io
    import json

    import pyarrow.parquet as pq

    from dpodiag.io.metadata import METADATA_KEY

    arrow = table.to_arrow().replace_schema_metadata({
        METADATA_KEY.encode(): json.dumps(run_metadata).encode(),
        f"{METADATA_KEY}.score".encode(): json.dumps(provenance).encode(),
    })
    sink = io.BytesIO()
    pq.write_table(arrow, sink)
    return sink.getvalue()


class _ProgressCounter:
    """Turn per-batch counts into (scored so far, total) calls of a progress callback."""

    def __init__(self, callback: Callable[[int, int], None] | None, total: int):
        self.callback = callback
        self.total = total
        self.done = 0

    def __call__(self, count: int) -> None:
        self.done += count
        if self.callback is not None:
            self.callback(self.done, self.total)


def _default_step(policy: Path) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", policy.resolve().name)
    return int(match.group(1)) if match else 0


def _is_text(value) -> bool:
    return isinstance(value, str)


def _is_messages(value) -> bool:
    return isinstance(value, list) and len(value) > 0 and all(
        isinstance(message, dict) and isinstance(message.get("role"), str)
        and isinstance(message.get("content"), str) for message in value)


def _text(value) -> str:
    """Return a string column value, or the contents of a message list joined by newlines."""
    if _is_text(value):
        return value
    return "\n".join(f"{message['role']}: {message['content']}" for message in value)


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UsageError("dpodiag score needs transformers and safetensors; install them with: "
                         "pip install 'dpodiag[score]'") from None
    return transformers


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


__all__ = ["pair_log_bytes", "read_preference_dataset", "response_start", "score_metadata", "score_pairs"]
