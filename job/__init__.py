"""Helpers for running fedsweep on a Ray cluster as Ray Jobs (see job/README.md)."""
