"""Adapters that record per-pair logs from training frameworks (optional extras)."""
