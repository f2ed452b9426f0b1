"""Parallelism applied to a model from outside, one module per concern."""

from engine.parallel.data import apply_data_parallel

__all__ = ["apply_data_parallel"]
