"""Wall-clock step timing and the summary statistics reported for it."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a wall-clock reading covers it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Times one interval on ``device``: start(), then stop() -> seconds."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._t0 = 0.0

    def start(self) -> None:
        sync(self.device)
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        sync(self.device)
        return time.perf_counter() - self._t0


@dataclass(frozen=True)
class Spread:
    """Median and range of a sample (timings here are noisy: report the spread, not one value)."""

    median: float
    min: float
    max: float
    mean: float
    stdev: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            raise ValueError("`values` must not be empty.")
        stdev = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(
            median=statistics.median(values),
            min=min(values),
            max=max(values),
            mean=statistics.fmean(values),
            stdev=stdev,
            n=len(values),
        )
