"""Measurements taken inside a run: timing, communication, memory, FLOPs."""
