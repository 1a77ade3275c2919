"""Cost of dpodiag.record.Recorder against one training step of the sample TinyLM trainer.

    .venv/bin/python benchmarks/recorder_cost.py [--steps 300] [--batch-size 16]

A training step is what sample_logs/trainer.py does for one batch of DPO pairs: a policy and a
reference forward pass over 2B sequences, the sigmoid loss, backward and an Adam update. The
recorder is timed on the tensors that step produced, in three ways:
- log: one `Recorder.log` call that only buffers (no flush is due);
- flush share: the median time to write one shard of 10,000 rows (the default flush_rows),
  spread over the steps that fill it;
- flush every batch: `log` with flush_rows=1, which writes and syncs one shard per call.
Each figure is the median over the timed steps, after warm-up steps, and is printed as a ratio
to the median training step.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpodiag.record import Recorder
from sample_logs.tinylm import TinyLM, make_pairs
from sample_logs.trainer import TrainerConfig, collate_pairs, pair_losses, score_batch

WARMUP_STEPS = 20
DEFAULT_FLUSH_ROWS = 10_000
# Shards timed for the flush share.
SHARDS = 5


def training_step(policy, reference, optimizer, pairs, config):
    """Run one DPO step and return its per-pair tensors and the batch."""
    optimizer.zero_grad()
    batch = collate_pairs(pairs, config)
    scores = score_batch(policy, reference, batch, config)
    losses = pair_losses(scores, config)
    losses.mean().backward()
    optimizer.step()
    return batch, scores, losses


def log_step(recorder: Recorder, step: int, batch, scores, losses) -> None:
    """Log one step's pairs the way a hand-written loop does."""
    recorder.log(step=step, policy_chosen_logps=scores.policy[0], policy_rejected_logps=scores.policy[1],
                 reference_chosen_logps=scores.reference[0], reference_rejected_logps=scores.reference[1],
                 chosen_length=scores.lengths[0], rejected_length=scores.lengths[1], loss=losses,
                 example_id=[pair.example_id for pair in batch.pairs], epoch=0.0)


def median_seconds(function, count: int) -> float:
    timings = []
    for index in range(count):
        start = time.perf_counter()
        function(index)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings[WARMUP_STEPS:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per measurement")
    parser.add_argument("--batch-size", type=int, default=16, help="preference pairs per step")
    options = parser.parse_args(argv)
    count = options.steps + WARMUP_STEPS

    # The sample trainer's model, data and optimizer; the reference starts as the policy.
    torch.manual_seed(0)
    config = TrainerConfig(batch_size=options.batch_size)
    policy = TinyLM().eval()
    reference = TinyLM().eval()
    reference.load_state_dict(policy.state_dict())
    reference.requires_grad_(False)
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.learning_rate)
    pairs = make_pairs(512, random.Random(0), "bench", set())
    batches = [random.Random(i).sample(pairs, options.batch_size) for i in range(count)]

    outputs = []
    step_seconds = median_seconds(
        lambda i: outputs.append(training_step(policy, reference, optimizer, batches[i], config)), count)

    with tempfile.TemporaryDirectory() as folder:
        buffering = Recorder(Path(folder) / "buffer", beta=0.1, loss_type="sigmoid",
                             flush_rows=10**9, flush_seconds=1e9)
        log_seconds = median_seconds(lambda i: log_step(buffering, i, *outputs[i]), count)

        # Shards of DEFAULT_FLUSH_ROWS rows, the size a default recorder writes. The first flush
        # of a process also pays one-time imports (pyarrow loads pandas when it is installed),
        # so the timed flushes follow it.
        buffering.flush()
        shard_timings = []
        for _ in range(SHARDS):
            while buffering._buffered_rows < DEFAULT_FLUSH_ROWS:
                log_step(buffering, 0, *outputs[0])
            start = time.perf_counter()
            buffering.flush()
            shard_timings.append(time.perf_counter() - start)
        shard_seconds = statistics.median(shard_timings)
        flush_share = shard_seconds * options.batch_size / DEFAULT_FLUSH_ROWS
        buffering.close()

        every_batch = Recorder(Path(folder) / "every", beta=0.1, loss_type="sigmoid", flush_rows=1)
        every_seconds = median_seconds(lambda i: log_step(every_batch, i, *outputs[i]), count)
        every_batch.close()

    print(f"TinyLM ({sum(p.numel() for p in policy.parameters()):,} parameters), batch of "
          f"{options.batch_size} pairs, {torch.get_num_threads()} torch threads, "
          f"median of {options.steps} steps")
    print(f"  training step                 {step_seconds * 1e3:9.3f} ms   1")
    print(f"  log (buffer only)             {log_seconds * 1e3:9.3f} ms   {log_seconds / step_seconds:.4f}")
    print(f"  flush share at 10,000 rows    {flush_share * 1e3:9.3f} ms   {flush_share / step_seconds:.4f}"
          f"   (one shard: {shard_seconds * 1e3:.1f} ms)")
    total = log_seconds + flush_share
    print(f"  per step, default flushing    {total * 1e3:9.3f} ms   {total / step_seconds:.4f}")
    print(f"  per step, flush_rows=1        {every_seconds * 1e3:9.3f} ms   {every_seconds / step_seconds:.4f}")


if __name__ == "__main__":
    main()
