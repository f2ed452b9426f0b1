"""Heartbeats of running trials, on the storages that keep them (Optuna's RDB storage: sqlite,
PostgreSQL, MySQL; a journal file keeps none).

Optuna beats only inside ``Study.optimize``; a sweep drives its study by ``ask``/``tell`` (it
decides per trial whether to launch, prune or reuse), so it beats itself: a thread records the
trial's heartbeat every ``sweep.heartbeat_s`` while the trial runs. The time is the database
server's, so the hosts' clocks need not agree. A trial whose heartbeat is older than the grace
period belongs to a worker that stopped (killed, its host lost): tuner.recovery fails it and
queues its configuration again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

log = logging.getLogger(__name__)

# a trial is stale after this many missed beats: one late write on a loaded machine (or a
# worker busy writing its report) must not fail a trial that is still running
GRACE_BEATS = 3


def grace_s(heartbeat_s: int) -> int:
    return GRACE_BEATS * heartbeat_s


def _heartbeat_storage(study: optuna.Study) -> BaseHeartbeat | None:
    storage = study._storage  # Optuna's own fail_stale_trials reads it the same way
    return storage if is_heartbeat_enabled(storage) else None  # type: ignore[return-value]


def enabled(study: optuna.Study) -> bool:
    return _heartbeat_storage(study) is not None


def ask(study: optuna.Study, distributions: dict[str, BaseDistribution]) -> optuna.Trial:
    """``study.ask``, without Optuna's warning that heartbeats are meant for ``optimize``
    (this module beats for the trial; see :func:`beating`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        return study.ask(distributions)


@contextlib.contextmanager
def beating(study: optuna.Study, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat now and every interval until the block ends."""
    storage = _heartbeat_storage(study)
    if storage is None:
        yield
        return
    interval = storage.get_heartbeat_interval()
    stop = threading.Event()

    def record() -> None:
        try:
            storage.record_heartbeat(trial_id)
        except Exception as err:  # a lost connection: the next beat may get through
            log.warning("heartbeat of trial id %d not recorded: %s", trial_id, err)

    def beat() -> None:
        while not stop.wait(interval):
            record()

    record()  # at once: a trial without any heartbeat is never found stale
    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def stale_trial_ids(study: optuna.Study) -> set[int]:
    """Ids of the RUNNING trials whose heartbeat is older than the grace period."""
    storage = _heartbeat_storage(study)
    if storage is None:
        return set()
    # the query Optuna's fail_stale_trials makes; the sweep fails the trials itself, so that
    # each carries its reason and its configuration is queued once (tuner.recovery)
    return set(storage._get_stale_trial_ids(study._study_id))
