"""Confirming the winner: when a sweep ends, the layouts whose throughput interval reaches the
best one's are measured again, side by side (`sweep.confirm_top` of them, in
`sweep.confirm_rounds` interleaved rounds, one launch each per round, so that a slow spell of
the machine hits them all alike). The winner is named with its range only when its slowest
launch beats every other's fastest; otherwise the sweep says they cannot be told apart here.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from engine.config import RunConfig
from tuner.config import Loaded, replace_keys
from tuner.launch import run_trial
from tuner.study import CONFIRM_ATTR, stored_result


@dataclass(frozen=True)
class Contender:
    trial: int
    tokens_per_s: list[float]  # one per round that ran

    @property
    def median(self) -> float:
        return statistics.median(self.tokens_per_s)


@dataclass(frozen=True)
class Verdict:
    contenders: list[Contender]  # best median first
    winner: int | None  # trial number, when it is told apart from the rest
    text: str


def close_to_best(trials: list[FrozenTrial], k: int) -> list[FrozenTrial]:
    """The best completed trial and the others whose 95% interval of tokens/s reaches its
    interval's lower end, fastest first, at most ``k``."""
    rows = []
    for t in trials:
        r = stored_result(t) if t.state == TrialState.COMPLETE else {}
        ci = r.get("tokens_per_s_ci")
        if r.get("tokens_per_s") and ci and "duplicate_of" not in t.user_attrs:
            rows.append((r["tokens_per_s"], ci, t))
    if not rows:
        return []
    rows.sort(key=lambda x: -x[0])
    low = rows[0][1][0]
    return [t for _, ci, t in rows if ci[1] >= low][:k]


def judge(contenders: list[Contender]) -> Verdict:
    ranked = sorted(contenders, key=lambda c: -c.median)
    best, rest = ranked[0], ranked[1:]
    spans = ", ".join(
        f"trial {c.trial} {c.median:,.0f} tok/s ({min(c.tokens_per_s):,.0f}-"
        f"{max(c.tokens_per_s):,.0f})"
        for c in ranked
    )
    if all(min(best.tokens_per_s) > max(c.tokens_per_s) for c in rest):
        text = f"confirmed: trial {best.trial} wins, measured again side by side: {spans}"
        return Verdict(ranked, best.trial, text)
    text = (
        f"not confirmed: the top {len(ranked)} cannot be told apart on this machine "
        f"(their ranges overlap when measured again side by side): {spans}"
    )
    return Verdict(ranked, None, text)


def confirm(
    cfg: Loaded, study: optuna.Study, out: Path, echo: Callable[[str], None]
) -> Verdict | None:
    """Measure the close ones again (see module doc); the verdict is stored in the study."""
    k, rounds = cfg.sweep.confirm_top, cfg.sweep.confirm_rounds
    trials = study.get_trials(deepcopy=False)
    close = close_to_best(trials, k) if k >= 2 else []
    earlier = study.user_attrs.get(CONFIRM_ATTR, {})
    if len(close) < 2 or earlier.get("after_trials") == len(trials):
        return None  # nothing to tell apart, or confirmed already with these trials
    echo(
        f"confirming: trials {', '.join(str(t.number) for t in close)} overlap the best; "
        f"{rounds} more launches each, interleaved"
    )
    configs = {t.number: _config(stored_result(t)) for t in close}
    measured: dict[int, list[float]] = {n: [] for n in configs}
    for r in range(rounds):
        for number, run_cfg in configs.items():
            trial_dir = out / "confirm" / f"{number:04d}-round{r}"
            outcome = run_trial(run_cfg, trial_dir=trial_dir, launcher=cfg.launcher)
            if outcome.ok and outcome.result and outcome.result.get("tokens_per_s"):
                measured[number].append(float(outcome.result["tokens_per_s"]))
    contenders = [Contender(n, v) for n, v in measured.items() if v]
    if len(contenders) < 2:
        echo("confirmation: the launches failed; the sweep's own figures stand")
        return None
    verdict = judge(contenders)
    study.set_user_attr(
        CONFIRM_ATTR,
        {
            "after_trials": len(trials),
            "winner": verdict.winner,
            "text": verdict.text,
            "contenders": [asdict(c) for c in verdict.contenders],
        },
    )
    echo(verdict.text)
    return verdict


def _config(result: dict) -> RunConfig:
    """The trial's run, measured once per launch (the rounds are the repeats)."""
    cfg = RunConfig.from_dict(result["config"])
    return replace_keys(cfg, {"measure.repeats": 1, "measure.profile_steps": 0})
