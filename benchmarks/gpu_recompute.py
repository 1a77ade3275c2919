"""Time the per-pair recompute on the CPU and on a CUDA device, on the benchmark's pair logs.

Prints one table row per log size and device: the median of three timed recomputes of every run
in the log (after one untimed warm-up run on each device), the speedup of CUDA over the CPU
measured in the same run, and the largest difference between the two devices' margins.
Run by gpu_check.sh; needs torch with CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import pair_log, parse_size  # noqa: E402

from dpodiag.compute.recompute import recompute  # noqa: E402
from dpodiag.pipeline import load  # noqa: E402


def timed_recompute(runs, device: torch.device, repeats: int = 3):
    """Median seconds of recomputing every run on `device`, and the last result."""
    recompute(runs[0], device)  # warm-up: CUDA context, kernels, allocator
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        results = [recompute(run, device) for run in runs]
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10M,30M")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/dpodiag-bench"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("torch sees no CUDA device")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, {torch.get_num_threads()} CPU threads")
    print("| rows | CPU s | CUDA s | CPU / CUDA | max |margin difference| |")
    print("|---|---|---|---|---|")
    for size in args.sizes.split(","):
        runs = load([pair_log(args.data_dir, parse_size(size))], streaming=False)
        cpu_seconds, on_cpu = timed_recompute(runs, torch.device("cpu"))
        cuda_seconds, on_cuda = timed_recompute(runs, torch.device("cuda"))
        difference = max(float(np.nanmax(np.abs(a.get_column("margin").to_numpy() - b.get_column("margin").to_numpy())))
                         for a, b in zip(on_cpu, on_cuda))
        print(f"| {size} | {cpu_seconds:.2f} | {cuda_seconds:.2f} | {cpu_seconds / cuda_seconds:.1f} "
              f"| {difference:.2g} |", flush=True)


if __name__ == "__main__":
    main()
