"""What a sweep prints while it runs: a header, one line per trial in the layout's terms, and
at the end the top layouts with their intervals and how to reproduce the best.

A trial's line names its run as the report does (``tuner.layout_name.layout_name``): derived
degrees such as dp from the world size, and no knob that does nothing in that layout. It says
how many trials are done, the time since the sweep (re)started and an estimate of the rest.
Lines stay within ``WIDTH`` characters so that a terminal does not wrap them; the report holds
the full details.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from engine.config import RunConfig
from tuner.early_stop import EARLY_STOP
from tuner.layout_name import layout_name, trial_config

WIDTH = 120
TOP = 3  # layouts named at the end of a sweep


def format_params(base: RunConfig, params: dict[str, Any]) -> str:
    """``dp2 · ZeRO-1 · tp2 · pp1 · mb4 · bf16 · no AC``: the trial's run, named as the
    report names it; searched knobs the words do not cover follow as ``name=value``."""
    return layout_name(trial_config(base, params), also=params)


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``1h02m``."""
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def clock_text(*, elapsed_s: float, left_s: float | None) -> str:
    """``3m05s, ~12m left``: time since the sweep (re)started, and the estimate of the rest
    (none before a trial's time is known)."""
    if left_s is None or math.isnan(left_s):
        return duration(elapsed_s)
    return f"{duration(elapsed_s)}, ~{duration(left_s)} left"


def header(name: str, searched: list[str], out: object, base: RunConfig) -> str:
    shown = ", ".join(searched)
    line = f"sweep {name}: searching {shown} -> {out}"
    p = base.parallel
    if p.dp == 0 and "parallel.dp" not in searched and p.world_size:
        line += f"\n  dp derived per trial: world_size {p.world_size} / (tp * pp)"
    return line


def _fit(text: str, room: int) -> str:
    return text if len(text) <= room else text[: max(room - 1, 0)] + "…"


def format_line(
    *,
    done: int,
    total: int,
    number: int,
    params: str,
    status: str,
    best: str = "",
    clock: str = "",
) -> str:
    """One progress line of at most WIDTH characters. What gives way, in order: the best so far
    (the next line shows it again), then the status, which goes on an indented line of its own
    (a failure's reason), after its first word on the first."""
    head = f"[{done:>3}/{total}{' ' + clock if clock else ''}] #{number:<3} {params}"
    for line in (f"{head}  {status}  {best}" if best else "", f"{head}  {status}"):
        if line and len(line) <= WIDTH:
            return line
    first = _fit(f"{head}  {status.split(' ', 1)[0]}", WIDTH)
    return f"{first}\n    {_fit(status, WIDTH - 4)}"


class Progress:
    """One line per trial on stderr: how far the sweep is and the best result so far."""

    def __init__(
        self,
        total: int,
        objective: str,
        echo: Callable[[str], None],
        *,
        base: RunConfig,
        counts: Callable[[FrozenTrial], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.objective, self.echo = total, objective, echo
        self.base, self.counts = base, counts
        self.clock, self.started = clock, clock()
        self.done_before: int | None = None  # trials done when this process started

    def _left_s(
        self, study: optuna.Study, trial: FrozenTrial | optuna.Trial, done: int, elapsed_s: float
    ) -> float | None:
        """The rest at this run's pace per counted trial (pruned layouts and repeats cost
        next to nothing and are in it); before this run has counted one, the mean wall time
        of the trials already measured."""
        if self.done_before is None:  # the first line: what was done before this trial
            trials = study.get_trials(deepcopy=False)
            self.done_before = sum(self.counts(t) for t in trials if t.number != trial.number)
        ran = done - self.done_before
        if ran > 0:
            per_trial = elapsed_s / ran
        else:
            walls = [
                t.user_attrs["duration_s"]
                for t in study.get_trials(deepcopy=False)
                if self.counts(t) and "duration_s" in t.user_attrs
            ]
            if not walls:
                return None
            per_trial = sum(walls) / len(walls)
        return max(self.total - done, 0) * per_trial

    def line(self, study: optuna.Study, trial: FrozenTrial | optuna.Trial, status: str) -> None:
        done = sum(self.counts(t) for t in study.get_trials(deepcopy=False))
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = ""
        if complete:
            sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
            top = max(complete, key=lambda t: sign * t.values[0])
            value = top.values[0]
            shown = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
            best = f"best {self.objective}={shown} (#{top.number})"
        params = format_params(self.base, trial.params)
        elapsed = self.clock() - self.started
        left = self._left_s(study, trial, done, elapsed)
        self.echo(
            format_line(
                done=done,
                total=self.total,
                number=trial.number,
                params=params,
                status=status,
                best=best,
                clock=clock_text(elapsed_s=elapsed, left_s=left),
            )
        )


def _stopped_early(df) -> list[str]:
    """How many trials early stopping ended (tuner/early_stop.py), as a line; none: no line."""
    n = int((df["fail_reason"] == EARLY_STOP).sum()) if not df.empty else 0
    if not n:
        return []
    trials = "trial" if n == 1 else "trials"
    return [f"{n} {trials} stopped early, slower than the best (partial figures in the report)"]


def final_lines(study: optuna.Study, sweep_dir: Path) -> list[str]:
    """The sweep's last words: the top layouts with their intervals (the ones the
    measurements cannot tell from the best marked) and the commands that reproduce the best."""
    from tuner.report import data
    from tuner.report.confirmation import confirmation_line
    from tuner.report.export_best import reproduce_commands
    from tuner.report.leaderboard import interval_text, leaderboard, top

    df = data.trials_frame(study)
    summary = data.summarize(study, df)
    board = leaderboard(df, metric=summary.best_metric, maximize=summary.best_maximize)
    best = top(board, TOP)
    early = _stopped_early(df)
    if best.empty:
        return [*early, "no layout completed: see the report's failed trials"]
    n = int(board["rank"].notna().sum())
    lines = early
    lines += [f"top {len(best)} of {n} measured layouts (median tokens/s [interval] (coverage)):"]
    for _, row in best.iterrows():
        tie = "  ≈ best" if row["tied_with_best"] else ""
        text = f"  {int(row['rank'])}. {row['layout']}  {interval_text(row)}{tie}"
        lines.append(text)
    verdict = confirmation_line(study, df)
    if verdict:
        lines.append(verdict)
    from_yaml, _ = reproduce_commands(sweep_dir)
    lines += [f"reproduce the best: {from_yaml}", f"  or: {summary.best_command}"]
    return lines
