"""Choice of the torch device for the recompute."""

from __future__ import annotations

import torch

from dpodiag.errors import UsageError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for `name`: "auto" picks CUDA when present, else the CPU.

    Raises:
        UsageError: `name` is not one of DEVICE_CHOICES, or "cuda" is requested without CUDA.
    """
    if name not in DEVICE_CHOICES:
        raise UsageError(f"expected --device to be one of {', '.join(DEVICE_CHOICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was requested but torch finds no CUDA device; use --device cpu")
    return torch.device(name)
