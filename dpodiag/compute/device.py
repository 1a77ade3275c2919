"""Choice of the torch device for the recompute."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from dpodiag.errors import UsageError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")
# Intra-op threads of torch's CPU operations during an analysis. The recompute runs on chunks of
# at most CPU_CHUNK_ROWS rows and the loss fits on small grids, where a second OpenMP thread gains
# little. When the cores are shared, the threads wait on each other: the 10M-row recompute took
# 3 to 5 times longer on two threads than on one (a 2-core VM with a load average near 6).
# Polars' own thread pool parallelises the reading and the aggregation.
CPU_THREADS = 1


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for `name`: "auto" picks CUDA when present, else the CPU.

    Raises:
        UsageError: `name` is not one of DEVICE_CHOICES, or "cuda" is requested without CUDA.
    """
    # torch is imported here, not with the module, so that the CLI's help and option parsing
    # (which read DEVICE_CHOICES) do not import it.
    import torch

    if name not in DEVICE_CHOICES:
        raise UsageError(f"expected --device to be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but torch finds no CUDA device; use --device cpu")
    return torch.device(name)


@contextlib.contextmanager
def cpu_threads(count: int = CPU_THREADS):
    """Run torch CPU operations on `count` intra-op threads inside the block.

    The previous setting is restored on exit, so a training loop in the same process keeps its own.
    """
    import torch

    previous = torch.get_num_threads()
    if previous == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
