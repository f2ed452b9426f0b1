"""Parallelism applied to a model from outside, one module per concern."""
