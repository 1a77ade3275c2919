"""Phrases shared by the text outputs of check, inspect and convert."""

from __future__ import annotations


def counted(number: int, noun: str) -> str:
    """Return "1 row" or "3 rows": the number with the noun in singular or plural."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def step_range(first: int | None, last: int | None) -> str:
    """Return "steps 1-80", or "step 10" when the log contains one step."""
    return f"step {first}" if first == last else f"steps {first}-{last}"
