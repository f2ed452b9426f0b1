"""Trials whose worker stopped: failed once, their configuration queued again.

A worker that dies mid-trial leaves its trial RUNNING. It is known to be dead when it ran on
this host and its process is gone, or, on any host, when its heartbeat expired
(tuner.heartbeat). Every worker looks for such trials before each trial it asks for; several
may find the same one at once, and the storage lets only one of them end it (a finished trial
cannot be finished again), so its configuration is queued exactly once.
"""

from __future__ import annotations

import logging
import socket

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from tuner import heartbeat
from tuner.study import LAYOUT_ATTR, WORKER_ATTR, tell, worker_alive

log = logging.getLogger(__name__)

REQUEUE_OF = "requeue_of"  # on a queued trial: the number of the trial it runs again


def requeue(study: optuna.Study, trial: FrozenTrial | optuna.Trial) -> None:
    """Queue ``trial``'s configuration again, its layout key published from the start: a
    worker asking meanwhile for the same configuration yields to the queued trial
    (tuner.workers.claim_holder)."""
    attrs = {REQUEUE_OF: trial.number}
    key = trial.user_attrs.get(LAYOUT_ATTR)
    if key is not None:
        attrs[LAYOUT_ATTR] = key
    study.enqueue_trial(trial.params, user_attrs=attrs, skip_if_exists=False)


def fail_once(study: optuna.Study, number: int) -> bool:
    """Fail a running trial; False when another worker (or its own) ended it first."""
    try:
        tell(study, number, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    except ValueError as err:  # Optuna saw it finished before trying: "Cannot tell a ..."
        if "Cannot tell" not in str(err):
            raise
        return False
    return True


def _why_dead(trial: FrozenTrial, stale: set[int]) -> str | None:
    worker = trial.user_attrs.get(WORKER_ATTR)
    if worker and worker.rpartition(":")[0] == socket.gethostname():
        # on this host the process table is the authority, not a late heartbeat
        return None if worker_alive(worker) else "stopped before the trial ended"
    if trial._trial_id in stale:
        return "stopped sending heartbeats"
    return None


def recover_interrupted(study: optuna.Study) -> list[FrozenTrial]:
    """Fail the trials whose worker has died, and queue their configurations again."""
    stale = heartbeat.stale_trial_ids(study)
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        why = _why_dead(trial, stale)
        if why is None:
            continue
        handle = optuna.trial.Trial(study, trial._trial_id)
        try:  # the same values from every worker that finds it: harmless if written twice
            handle.set_user_attr("fail_reason", "interrupted")
            handle.set_user_attr(
                "fail_detail", f"worker {trial.user_attrs.get(WORKER_ATTR) or '?'} {why}"
            )
        except UpdateFinishedTrialError:
            continue
        if not fail_once(study, trial.number):
            continue
        requeue(study, trial)
        recovered.append(trial)
        log.warning("trial %d was interrupted; its configuration is queued again", trial.number)
    return recovered
