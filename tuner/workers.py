"""Several sweep workers on one study: distinct sampler seeds, one claim per configuration, and
a trial budget that counts the trials other workers are running.

Each worker registers itself in the study (one attribute per worker, so concurrent registrations
cannot overwrite each other) and takes its index among the live registered workers, ordered by
start: a lone worker is index 0 and seeds its sampler with ``sweep.seed`` plus the number of
trials already decided (a fresh sweep is reproducible; a resume does not propose its first
configurations again); the others add their index, so no two propose in lockstep.

A configuration belongs to the lowest-numbered trial that runs it (:func:`claim_holder`): a
worker that finds an earlier queued or running trial with the same configuration does not
launch its own, nor one whose configuration a finished trial measured.
"""

from __future__ import annotations

import logging
import time

import optuna
from hydra.utils import instantiate
from optuna.trial import FrozenTrial, TrialState

from tuner.config import Loaded
from tuner.study import LAYOUT_ATTR, WORKER_ATTR, worker_alive, worker_id

log = logging.getLogger(__name__)

_PREFIX = "worker:"  # study attribute per worker: its start time
# a trial publishes its configuration within milliseconds of being asked for; one silent for
# this long belongs to a stuck worker, and is not waited for
CLAIM_WAIT_S = 30.0
CLAIM_POLL_S = 0.05


def register(study: optuna.Study) -> int:
    """Record this worker in the study; its index among the live workers, by start time."""
    me = worker_id()
    study.set_user_attr(_PREFIX + me, time.time())
    workers = sorted(
        (started, name[len(_PREFIX) :])
        for name, started in study.user_attrs.items()
        if name.startswith(_PREFIX) and worker_alive(name[len(_PREFIX) :])
    )
    return [w for _, w in workers].index(me)


def reseed(study: optuna.Study, cfg: Loaded, *, index: int, decided: int) -> int | None:
    """Give the study a sampler seeded for this worker; returns the seed (None: the sampler
    takes none)."""
    if "seed" not in cfg.sampler:
        return None
    seed = cfg.sweep.seed + decided + 1_000_003 * index
    study.sampler = instantiate({**cfg.sampler, "seed": seed})
    return seed


def claim_holder(study: optuna.Study, key: str, number: int) -> FrozenTrial | None:
    """The trial with the first claim on configuration ``key``, if not trial ``number``: a
    lower-numbered trial with the same configuration, queued or running on a live worker.

    The storage hands out trial numbers one at a time, so every lower-numbered trial exists
    already; one just asked for by another worker may not have published its configuration
    yet (it does so right after asking), and is waited for. So of two workers that propose
    the same configuration at once, exactly one measures it: the lower-numbered trial's.
    """
    deadline = time.monotonic() + CLAIM_WAIT_S
    while True:
        unpublished = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
            worker = t.user_attrs.get(WORKER_ATTR)
            if t.number >= number or (worker and not worker_alive(worker)):
                continue
            if t.user_attrs.get(LAYOUT_ATTR) == key:
                return t
            if t.state == TrialState.RUNNING and LAYOUT_ATTR not in t.user_attrs:
                unpublished.append(t.number)
        if not unpublished:
            return None
        if time.monotonic() > deadline:
            log.warning("trials %s published no configuration in %gs", unpublished, CLAIM_WAIT_S)
            return None
        time.sleep(CLAIM_POLL_S)


def ahead(study: optuna.Study, number: int) -> int:
    """Trials with a lower number that live workers are running now: they have the first
    claim on the budget (trial numbers are handed out by the storage, atomically)."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.number < number and worker_alive(t.user_attrs.get(WORKER_ATTR, ""))
    )


def running_elsewhere(study: optuna.Study) -> int:
    """Trials other live workers are running now (they will count toward the budget)."""
    me = worker_id()
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get(WORKER_ATTR) not in (None, me)
        and worker_alive(t.user_attrs[WORKER_ATTR])
    )
