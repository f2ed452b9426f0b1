"""What a sweep prints while it runs: a header, then one line per trial, in the layout's terms.

A trial's line shows what its run actually is (``space.effective_params``): derived degrees such
as dp from the world size, and no knob that does nothing in that layout. Lines stay within
``WIDTH`` characters so that a terminal does not wrap them; the report holds the full details.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from engine.config import RunConfig
from tuner.space import effective_params

WIDTH = 120
# long knob names, shortened in progress lines only (the report and trials.csv use full keys)
SHORT = {
    "pp_schedule": "sched",
    "pp_virtual_stages": "vstages",
    "micro_batch": "mb",
    "precision": "prec",
    "activation_checkpointing": "ac",
    "global_batch": "gb",
}


def format_params(base: RunConfig, params: dict[str, Any]) -> str:
    """``tp=2 pp=1 dp=2 zero=1 mb=4 prec=bf16``: a trial's run, as short as it can be read."""
    words = []
    for key, value in effective_params(base, params).items():
        name = key.split(".")[-1]
        words.append(f"{SHORT.get(name, name)}={value}")
    return " ".join(words)


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
    *, done: int, total: int, number: int, params: str, status: str, best: str = ""
) -> str:
    """One progress line of at most WIDTH characters. What gives way, in order: the best so far
    (the next line shows it again), then the status, which goes on an indented line of its own
    (a failure's reason), after its first word on the first."""
    head = f"[{done:>3}/{total}] #{number:<3} {params}"
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
    ) -> None:
        self.total, self.objective, self.echo = total, objective, echo
        self.base, self.counts = base, counts

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
        self.echo(
            format_line(
                done=done,
                total=self.total,
                number=trial.number,
                params=params,
                status=status,
                best=best,
            )
        )
