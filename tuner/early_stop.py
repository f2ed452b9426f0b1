"""Early stopping: end a trial once its steps so far show it cannot beat the best one.

While a trial's ranks run, each appends its step times to a progress file
(engine.progress_log). The launcher reads them every ``engine.launch.POLL_S`` seconds; each new
timed step's throughput is reported to Optuna (``trial.report``), and the study's pruner
(:class:`SlowerThanBest`) decides. The rule (:func:`verdict`): after at least
``sweep.early_stop_min_steps`` timed steps, the optimistic end of the 95% interval of the
trial's median tokens/s (engine.metrics.stats, the interval the report shows) lies below the
median tokens/s of the best COMPLETE trial in the storage, read at decision time, so that
workers sharing a study prune against each other's best.

With few steps the interval is wide (with fewer than 6 it is [min, max], which covers less than
95%: its coverage is kept with the partial figures), so only a clearly slower trial is stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.pruners import BasePruner, NopPruner
from optuna.trial import FrozenTrial, TrialState

from engine.config import RunConfig
from engine.metrics.stats import MedianCI, median_ci
from engine.progress_log import step_times

log = logging.getLogger(__name__)

EARLY_STOP = "early_stop"  # fail_reason of a trial stopped early (state PRUNED)
OBJECTIVE = "tokens_per_s"  # the objective the rule compares (medians of the timed steps)
# the partial figures kept on a trial stopped early (user attributes)
PARTIAL_STEPS = "partial_steps"
PARTIAL_TPS = "partial_tokens_per_s"
PARTIAL_CI = "partial_tokens_per_s_ci"
PARTIAL_COVERAGE = "partial_tokens_per_s_ci_coverage"
SLOWER_THAN = "slower_than"  # the number of the trial it could not beat


@dataclass(frozen=True)
class Verdict:
    """Why a trial is stopped: its partial interval against the best trial's median."""

    partial: MedianCI  # of the trial's timed steps so far
    best_number: int
    best_median: float

    @property
    def reason(self) -> str:
        return (
            f"slower than trial {self.best_number} (optimistic {self.partial.high:,.0f} tok/s "
            f"< median {self.best_median:,.0f} tok/s after {self.partial.n} steps)"
        )


def verdict(
    samples: list[float], *, best: tuple[int, float] | None, min_steps: int
) -> Verdict | None:
    """The rule, on a trial's tokens/s per timed step so far and the best completed trial's
    (number, median tokens/s): a Verdict when the trial cannot catch up, else None."""
    if best is None or len(samples) < max(min_steps, 1):
        return None
    partial = median_ci(samples)
    if partial.high < best[1]:
        return Verdict(partial, best_number=best[0], best_median=best[1])
    return None


def best_complete(study: optuna.Study) -> tuple[int, float] | None:
    """The best COMPLETE trial's (number, tokens/s), as the storage holds it now."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    top = max(done, key=lambda t: (t.values[0], -t.number))
    return top.number, top.values[0]


def samples_of(trial: FrozenTrial) -> list[float]:
    """The tokens/s of the trial's timed steps reported so far, in order."""
    return [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]


class SlowerThanBest(BasePruner):
    """Prunes a trial whose optimistic tokens/s lies below the best completed trial's median
    (:func:`verdict`)."""

    def __init__(self, min_steps: int) -> None:
        self.min_steps = min_steps

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        best = best_complete(study)
        return verdict(samples_of(trial), best=best, min_steps=self.min_steps) is not None


def applies(enabled: bool, objectives: list[str]) -> bool:
    """Early stopping compares tokens/s of one objective (Optuna's reports and pruners are
    single-objective)."""
    return enabled and list(objectives) == [OBJECTIVE]


def unused(*, enabled: bool, objectives: list[str], launcher: str) -> str | None:
    """Why early stopping, turned on, does nothing in this sweep (None: it works)."""
    if not enabled:
        return None
    if list(objectives) != [OBJECTIVE]:
        return f"sweep.early_stop has no effect: it needs sweep.objectives=[{OBJECTIVE}] alone"
    if launcher != "local":
        return f"sweep.early_stop has no effect with launcher={launcher}: local launcher only"
    return None


def make_pruner(*, enabled: bool, min_steps: int, objectives: list[str]) -> BasePruner:
    if applies(enabled, objectives):
        return SlowerThanBest(min_steps)
    return NopPruner()


class Watch:
    """Follows one trial's launches: reports each new timed step's tokens/s to Optuna and
    asks the study's pruner whether to go on. ``verdict`` holds the reason once it said no."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, *, min_steps: int) -> None:
        self.study, self.trial, self.min_steps = study, trial, min_steps
        self.samples: list[float] = []
        self.verdict: Verdict | None = None
        self._seen: dict[Path, set[int]] = {}

    def poll_for(self, cfg: RunConfig, run_dir: Path) -> Callable[[], bool]:
        """The launcher's ``poll`` for one launch of ``cfg`` reporting into ``run_dir``."""
        # here, not at the top: engine.results loads torch, which readers of a study
        # (tuner.study imports this module for its pruner) do without
        from engine.results import timed_steps, tokens_per_step

        timed = set(timed_steps(cfg)[0])
        tokens = tokens_per_step(cfg)
        seen = self._seen.setdefault(run_dir, set())

        def poll() -> bool:
            new = step_times(run_dir, cfg.parallel.n_ranks)
            fresh = sorted(s for s in new if s in timed and s not in seen)
            for s in fresh:
                seen.add(s)
                self.trial.report(tokens / new[s], len(self.samples))
                self.samples.append(tokens / new[s])
            if not fresh or len(self.samples) < self.min_steps:
                return False
            return self._decide()

        return poll

    def _decide(self) -> bool:
        if not self.trial.should_prune():
            return False
        # the pruner's reason, for the record (the storage's best, read again)
        self.verdict = verdict(
            self.samples, best=best_complete(self.study), min_steps=self.min_steps
        )
        return self.verdict is not None


def keep_partial(trial: optuna.Trial, found: Verdict) -> str:
    """Keep a stopped trial's reason and partial figures (before it is told PRUNED); returns
    the progress line's status."""
    ci = found.partial
    trial.set_user_attr("fail_reason", EARLY_STOP)
    trial.set_user_attr("fail_detail", found.reason)
    trial.set_user_attr(SLOWER_THAN, found.best_number)
    trial.set_user_attr(PARTIAL_STEPS, ci.n)
    trial.set_user_attr(PARTIAL_TPS, ci.median)
    trial.set_user_attr(PARTIAL_CI, [ci.low, ci.high])
    trial.set_user_attr(PARTIAL_COVERAGE, ci.coverage)
    return f"stopped early: {found.reason}"


def stopped_early(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.PRUNED and trial.user_attrs.get("fail_reason") == EARLY_STOP


def partial_tokens_per_s(trial: FrozenTrial) -> float | None:
    """The median tokens/s a trial stopped early had reached (None for any other trial)."""
    return trial.user_attrs.get(PARTIAL_TPS) if stopped_early(trial) else None
