"""dpodiag score on a tiny local Llama: masking against a per-token loop, formats, errors, CLI."""

import json
import subprocess
import sys

import polars as pl
import pyarrow.parquet as pq
import pytest

pytest.importorskip("transformers", reason="transformers is not installed; pip install -e '.[test]' installs it")

import torch
from tiny_hf import char_tokenizer, reversal_pairs, save_tiny_model

from dpodiag.errors import InputError, UsageError
from dpodiag.io import load_runs
from dpodiag.scoring import pair_log_bytes, response_start, score_metadata, score_pairs

# A minimal chat template: each message as "<s>" + the role's first letter + ":" + the content.
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'][0] }}:{{ m['content'] }}{% endfor %}"
                 "{% if add_generation_prompt %}<s>a:{% endif %}")


def dpodiag(*args):
    return subprocess.run([sys.executable, "-m", "dpodiag", *map(str, args)], capture_output=True,
                          text=True, check=False, timeout=300)


def slow_logp(folder, text_prompt: str, text_full: str) -> tuple[float, int]:
    """Sum log_softmax over the response tokens of one unpadded sequence, one position at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    prompt_ids = tokenizer(text_prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(text_full, add_special_tokens=False)["input_ids"]
    assert ids[: len(prompt_ids)] == prompt_ids  # one token per character: nothing merges
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    total = 0.0
    for position in range(len(prompt_ids), len(ids)):
        total += torch.log_softmax(logits[position - 1], dim=-1)[ids[position]].item()
    return total, len(ids) - len(prompt_ids)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return save_tiny_model(folder / "policy", seed=1), save_tiny_model(folder / "reference", seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    pl.DataFrame(reversal_pairs(10, seed=3)).write_ndjson(path)
    return path


def test_matches_per_token_loop(models, dataset):
    policy, reference = models
    table = score_pairs(policy, dataset, reference=reference, batch_size=3, device="cpu")
    assert table.height == 10
    for row in table.iter_rows(named=True):
        for role, folder in (("policy", policy), ("reference", reference)):
            for side in ("chosen", "rejected"):
                expected, length = slow_logp(folder, row["prompt"], row["prompt"] + row[side] + "</s>")
                assert row[f"{role}_{side}_logps"] == pytest.approx(expected, abs=1e-5)
                assert row[f"{side}_length"] == length


def test_lengths_count_first_response_token_and_eos(models, dataset):
    table = score_pairs(models[0], dataset, batch_size=4, device="cpu")
    # One token per character, plus the appended EOS.
    assert table["chosen_length"].to_list() == [len(text) + 1 for text in table["chosen"].to_list()]
    assert table["rejected_length"].to_list() == [len(text) + 1 for text in table["rejected"].to_list()]
    assert "reference_chosen_logps" not in table.columns
    assert table["example_id"].to_list() == [str(i) for i in range(10)]


def test_batch_size_does_not_change_scores(models, dataset):
    single = score_pairs(models[0], dataset, batch_size=1, device="cpu")
    batched = score_pairs(models[0], dataset, batch_size=16, device="cpu")
    for column in ("policy_chosen_logps", "policy_rejected_logps"):
        assert batched[column].to_list() == pytest.approx(single[column].to_list(), abs=1e-5)


def test_chat_template_conversations(tmp_path):
    folder = save_tiny_model(tmp_path / "chat", seed=2)
    tokenizer = char_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    dataset = tmp_path / "chat.jsonl"
    rows = [{"prompt": [{"role": "user", "content": "abc"}],
             "chosen": [{"role": "assistant", "content": "cba"}],
             "rejected": [{"role": "assistant", "content": "abc"}], "id": "pair-1"}]
    dataset.write_text("\n".join(json.dumps(row) for row in rows) + "\n")

    table = score_pairs(folder, dataset, device="cpu")
    expected, length = slow_logp(folder, "<s>u:abc<s>a:", "<s>u:abc<s>a:cba")
    assert table["policy_chosen_logps"][0] == pytest.approx(expected, abs=1e-5)
    assert table["chosen_length"][0] == length == 3
    assert table["example_id"].to_list() == ["pair-1"]
    assert table["prompt"][0] == "user: abc"


def test_conversation_needs_chat_template(models, tmp_path):
    dataset = tmp_path / "chat.jsonl"
    dataset.write_text(json.dumps({"prompt": [{"role": "user", "content": "abc"}],
                                   "chosen": "cba", "rejected": "abc"}) + "\n")
    with pytest.raises(UsageError, match="no chat template"):
        score_pairs(models[0], dataset, device="cpu")


@pytest.mark.parametrize("prompt_ids, full_ids, start", [
    ([1, 2, 3], [1, 2, 3, 4, 5], 3),
    ([1, 2, 3], [1, 2, 9, 5], 2),  # the prompt's last token merged with the response's first
    ([1, 2], [1, 2], 2),
])
def test_response_start(prompt_ids, full_ids, start):
    assert response_start(prompt_ids, full_ids) == start


def test_parquet_dataset_and_metadata(models, tmp_path):
    dataset = tmp_path / "pairs.parquet"
    pl.DataFrame(reversal_pairs(4, seed=5)).write_parquet(dataset)
    output = tmp_path / "scores.parquet"
    result = dpodiag("score", "--policy", models[0], "--reference", models[1], "--dataset", dataset,
                     "-o", output, "--beta", 0.1, "--loss-type", "sigmoid", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "4 pairs scored at step 0" in result.stdout
    metadata = pq.read_schema(output).metadata
    run = json.loads(metadata[b"dpodiag"])
    assert run == {"beta": 0.1, "loss_type": "sigmoid", "logps_normalisation": "sum",
                   "framework": "dpodiag score", "reference_model": str(models[1])}
    assert json.loads(metadata[b"dpodiag.score"])["policy"] == str(models[0])


def test_check_on_scored_log(models, dataset, tmp_path):
    output = tmp_path / "scores.parquet"
    # The reference as its own policy: the state before any update, where every log-ratio is 0.
    result = dpodiag("score", "--policy", models[1], "--reference", models[1], "--dataset", dataset,
                     "-o", output, "--beta", 0.1, "--loss-type", "sigmoid", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    check = dpodiag("check", output, "--format", "json")
    assert check.returncode == 0, check.stderr
    document = json.loads(check.stdout)
    assert document["runs"][0]["level"] == "pairs"
    assert [f["code"] for f in document["findings"] if f["severity"] == "error"] == []


def test_checkpoints_in_one_folder_form_one_run(models, dataset, tmp_path):
    checkpoint = tmp_path / "checkpoint-100"
    save_tiny_model(checkpoint, seed=4)
    folder = tmp_path / "scores"
    folder.mkdir()
    for policy, name in ((models[1], "part-00000.parquet"), (checkpoint, "part-00100.parquet")):
        table = score_pairs(policy, dataset, reference=models[1], device="cpu")
        run_metadata, provenance = score_metadata(policy, models[1], dataset, beta=0.1)
        (folder / name).write_bytes(pair_log_bytes(table, run_metadata, provenance))
    (run,) = load_runs(folder)
    assert run.table["step"].unique().sort().to_list() == [0, 100]


def test_existing_output_needs_force(models, dataset, tmp_path):
    output = tmp_path / "scores.parquet"
    output.write_bytes(b"")
    result = dpodiag("score", "--policy", models[0], "--dataset", dataset, "-o", output)
    assert result.returncode == 2
    assert "file exists; pass --force" in result.stderr


def test_rejects_pickle_weights(tmp_path, dataset):
    folder = save_tiny_model(tmp_path / "pickled")
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(UsageError, match=r"pickle-based weights \(pytorch_model.bin\)"):
        score_pairs(folder, dataset, device="cpu")


def test_rejects_missing_model_folder(tmp_path, dataset):
    result = dpodiag("score", "--policy", tmp_path / "absent", "--dataset", dataset, "-o", tmp_path / "o.parquet")
    assert result.returncode == 2
    assert "no such folder" in result.stderr


def test_missing_dataset_column(models, tmp_path):
    dataset = tmp_path / "pairs.jsonl"
    dataset.write_text(json.dumps({"prompt": "abc>", "chosen": "cba"}) + "\n")
    with pytest.raises(InputError, match="missing column 'rejected'"):
        score_pairs(models[0], dataset, device="cpu")


def test_invalid_dataset_value(models, tmp_path):
    dataset = tmp_path / "pairs.jsonl"
    dataset.write_text(json.dumps({"prompt": "abc>", "chosen": 3, "rejected": "abc"}) + "\n")
    with pytest.raises(InputError, match="row 1, column 'chosen': expected a string"):
        score_pairs(models[0], dataset, device="cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(models, dataset):
    cpu = score_pairs(models[0], dataset, reference=models[1], device="cpu", dtype="float32")
    cuda = score_pairs(models[0], dataset, reference=models[1], device="cuda", dtype="float32")
    for column in ("policy_chosen_logps", "reference_rejected_logps"):
        assert cuda[column].to_list() == pytest.approx(cpu[column].to_list(), abs=1e-4)


def test_rejects_pair_longer_than_context(models, tmp_path):
    dataset = tmp_path / "long.jsonl"
    # The tiny Llama has max_position_embeddings 64.
    dataset.write_text(json.dumps({"prompt": "a" * 40 + ">", "chosen": "b" * 30, "rejected": "c"}) + "\n")
    with pytest.raises(UsageError, match="pair '0' has 72 tokens, more than the max_position_embeddings 64"):
        score_pairs(models[0], dataset, device="cpu")
