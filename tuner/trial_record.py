"""Recording a launched trial's outcome in the study: its figures and state (COMPLETE, FAIL
with its reason, or PRUNED by early stopping with its partial figures), its wall time and its
fixed cost (``overhead_s``)."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from tuner import early_stop
from tuner.launch import TrialOutcome
from tuner.study import record_result, tell


def finish(
    study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome, objectives: list[str]
) -> str:
    trial.set_user_attr("log_dir", str(outcome.log_dir.resolve()))
    trial.set_user_attr("duration_s", outcome.wall_s)
    if outcome.early_stop is not None:
        status = early_stop.keep_partial(trial, outcome.early_stop)
        tell(study, trial, state=TrialState.PRUNED)
        return status
    if outcome.result is not None and "timed_steps" in outcome.result:  # not a diverged run
        trial.set_user_attr("overhead_s", overhead_s(outcome.result, outcome.wall_s))
    if outcome.result is not None:
        record_result(trial, outcome.result)
    missing = [o for o in objectives if (outcome.result or {}).get(o) is None]
    if outcome.ok and outcome.result is not None and missing:
        why = outcome.result.get("not_measured", {})
        outcome.reason = "unmeasured"
        outcome.detail = "; ".join(f"{o}: {why.get(o, 'not in the result')}" for o in missing)
    elif outcome.ok and outcome.result is not None:
        values = [float(outcome.result[o]) for o in objectives]
        tell(study, trial, values)
        return f"ok {outcome.result['tokens_per_s']:.1f} tok/s"
    trial.set_user_attr("fail_reason", outcome.reason)
    trial.set_user_attr("fail_detail", outcome.detail)
    tell(study, trial, state=TrialState.FAIL)
    # the detail leads with the rank and its error; allocator messages sit past 60 characters
    return f"FAILED ({outcome.reason}: {outcome.detail[:160]})"


def overhead_s(result: dict, wall_s: float) -> float:
    """A trial's fixed cost: its wall time less its timed steps (start-up, rendezvous, model
    build, warmup, profiled steps, result writing), summed over repeats."""
    times, timed = result["step_times_s"], result["timed_steps"]
    if result.get("repeats", 1) > 1:  # per launch, side by side
        spent = sum(t[i] for t, idx in zip(times, timed, strict=True) for i in idx)
    else:
        spent = sum(times[i] for i in timed)
    return wall_s - spent
