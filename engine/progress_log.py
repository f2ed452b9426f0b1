"""Step times reported while a run goes on: each rank appends one line per finished step to
``<progress>/progress.rank<N>.tsv``, so that a launcher can follow a run without waiting for
its result (the tuner stops trials that cannot win: tuner/early_stop.py).

A line is ``<step>\\t<seconds>\\n``, written and flushed after the stopwatch has stopped, so
the write is no part of any step's time. Readers take complete lines only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO


def progress_path(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"progress.rank{rank}.tsv"


class ProgressLog:
    """This rank's progress file; a no-op when the run has no ``progress`` folder."""

    def __init__(self, folder: str, *, rank: int) -> None:
        self._file: TextIO | None = None
        if folder:  # truncated: a launch reports its own steps only
            self._file = progress_path(folder, rank).open("w", encoding="utf-8")

    def append(self, step: int, seconds: float) -> None:
        if self._file is not None:
            self._file.write(f"{step}\t{seconds!r}\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_steps(folder: str | Path, rank: int) -> dict[int, float]:
    """The steps a rank has reported so far: step -> seconds (none if it has not started)."""
    try:
        text = progress_path(folder, rank).read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    steps: dict[int, float] = {}
    for line in text.split("\n")[:-1]:  # the last piece may be a line being written
        step, seconds = line.split("\t")
        steps[int(step)] = float(seconds)
    return steps


def step_times(folder: str | Path, nproc: int) -> dict[int, float]:
    """Step -> seconds of the steps every rank has reported, each the slowest rank's time
    (a step lasts as long as its slowest rank, as in engine.results)."""
    per_rank = [read_steps(folder, rank) for rank in range(nproc)]
    common = set.intersection(*(set(r) for r in per_rank)) if per_rank else set()
    return {s: max(r[s] for r in per_rank) for s in sorted(common)}
