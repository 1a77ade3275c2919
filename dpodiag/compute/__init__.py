"""Recomputation with torch: implicit rewards, Bradley–Terry probabilities, losses, aggregates."""
