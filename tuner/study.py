"""The Optuna study of a sweep: storage, sampler, and safe resumption.

A sweep is identified by ``sweep.name``; running the same command again continues its study.
What identifies it (objectives, space, sampler, fixed settings) is stored with it, and a
resumption that would mix measurements taken under different settings is refused
(tuner.resume).
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from hydra.utils import instantiate
from optuna.distributions import BaseDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial

from engine.config import ConfigError
from engine.result_schema import from_columns
from tuner.config import OBJECTIVES, Loaded
from tuner.early_stop import make_pruner
from tuner.machine import Machine, describe_record, now_iso
from tuner.machine import current as current_machine
from tuner.outputs import OutputError, check_rdb_url, open_storage
from tuner.resume import SweepIdentity, check_resumable

log = logging.getLogger(__name__)

WORKER_ATTR = "worker"  # "<host>:<pid>" of the process running a trial
LAYOUT_ATTR = "layout_key"  # the configuration a trial runs, normalised (space.layout_key)
MACHINE_ATTR = "machine"  # on each trial: the id of the machine that measured it
MACHINES_ATTR = "machines"  # on the study: id -> the machine's record, first one first
# on each trial that produced a result: the run's result JSON, whole, in one storage write
# (engine/result_schema.py declares its figures)
RESULT_ATTR = "result"
CONFIRM_ATTR = "confirmation"  # on the study: the end-of-sweep re-measurement and its verdict


def sweep_dir(cfg: Loaded) -> Path:
    return Path(cfg.sweep.out_dir) / cfg.sweep.name


def storage_for(cfg: Loaded, *, heartbeat: bool = False) -> optuna.storages.BaseStorage:
    """``sweep.storage``: "" (sqlite file in the sweep folder), an RDB URL, or journal:PATH;
    ``heartbeat``: a sweep's storage, whose running trials beat every ``sweep.heartbeat_s``
    (RDB storages only; tuner.heartbeat).

    The storage is opened here, before any trial: an unreachable, read-only or unknown target
    is an :class:`~tuner.outputs.OutputError` (one line, exit status 2)."""
    return open_storage(
        cfg.sweep.storage,
        default=sweep_dir(cfg) / "study.db",
        out_key="sweep.out_dir",
        heartbeat_s=cfg.sweep.heartbeat_s if heartbeat else 0,
    )


def make_sampler(cfg: Loaded) -> optuna.samplers.BaseSampler:
    try:
        sampler = instantiate(cfg.sampler)
    except Exception as err:  # a bad _target_ or argument: report it as a config problem
        raise ConfigError(f"`sampler` could not be created from {cfg.sampler}: {err}") from None
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise ConfigError(f"`sampler._target_` must name an Optuna sampler, got {type(sampler)}.")
    return sampler


def fixed_settings(cfg: Loaded, searched: list[str]) -> dict[str, Any]:
    """The run settings a sweep holds fixed: the base config without the searched keys."""
    data = cfg.run.to_dict()
    data.pop("out", None)
    data.pop("progress", None)
    for key in searched:
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node.pop(leaf, None)
    return data


def base_overrides(cfg: Loaded, searched: list[str]) -> list[str]:
    """The user's overrides that shape a run (for the report's reproduce command)."""
    skip = ("sweep.", "launcher.", "run.", "space", "sampler", "hydra")
    kept = [o for o in cfg.overrides if not o.lstrip("+~").startswith(skip)]
    kept = [o for o in kept if o.split("=", 1)[0].lstrip("+~") not in searched]
    if not any(o.startswith("model=") for o in kept):
        kept.insert(0, f"model={cfg.run.model.name}")
    return kept


def open_study(
    cfg: Loaded, distributions: dict[str, BaseDistribution]
) -> tuple[optuna.Study, Machine]:
    """Create or resume the sweep's study; returns it with the machine this process measures
    on (recorded in the study). A resume that would mix measurements is refused (tuner.resume)
    before anything is written."""
    machine = current_machine()
    searched = list(distributions)
    identity = SweepIdentity(
        objectives=list(cfg.sweep.objectives),
        distributions=dict(distributions),
        sampler=dict(cfg.sampler),
        fixed=fixed_settings(cfg, searched),
    )
    study = optuna.create_study(
        study_name=cfg.sweep.name,
        storage=storage_for(cfg, heartbeat=True),
        sampler=make_sampler(cfg),
        pruner=make_pruner(
            enabled=cfg.sweep.early_stop,
            min_steps=cfg.sweep.early_stop_min_steps,
            objectives=list(cfg.sweep.objectives),
        ),
        directions=[OBJECTIVES[o] for o in cfg.sweep.objectives],
        load_if_exists=True,
    )
    if not identity.is_recorded_in(study):
        identity.record(study)
        with warnings.catch_warnings():  # experimental in Optuna; names the dashboard's axes
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(cfg.sweep.objectives))
        study.set_user_attr("sweep_name", cfg.sweep.name)
        study.set_user_attr("base_overrides", base_overrides(cfg, searched))
        study.set_user_attr(MACHINES_ATTR, {machine.id: _machine_record(machine)})
        return study, machine
    check_resumable(cfg.sweep.name, study, identity)
    _check_machine(cfg, study, machine)
    return study, machine


def study_exists(cfg: Loaded) -> bool:
    """Whether ``sweep.storage`` holds a study named ``sweep.name``, found without creating a
    file, a folder, a table or a study (opening a storage through Optuna creates them)."""
    url, name = cfg.sweep.storage, cfg.sweep.name
    if not url:
        path = sweep_dir(cfg) / "study.db"
        if not path.is_file():
            return False
        url = f"sqlite:///{path.resolve()}"
    elif url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        if not path.is_file():
            return False
        journal = JournalStorage(JournalFileBackend(str(path)))
        return name in optuna.get_all_study_names(storage=journal)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return False
    check_rdb_url(url)  # an unknown scheme or a missing driver: one line, not a traceback
    engine = sqlalchemy.create_engine(url)
    try:
        if not sqlalchemy.inspect(engine).has_table("studies"):
            return False
        with engine.connect() as conn:
            query = sqlalchemy.text("SELECT 1 FROM studies WHERE study_name = :name")
            return conn.execute(query, {"name": name}).first() is not None
    except sqlalchemy.exc.SQLAlchemyError as err:  # unreachable server, refused login, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OutputError(f"sweep.storage cannot be read: {first}") from None
    finally:
        engine.dispose()


def _machine_record(machine: Machine) -> dict[str, Any]:
    return {**machine.to_dict(), "first_seen": now_iso()}


def _check_machine(cfg: Loaded, study: optuna.Study, machine: Machine) -> None:
    """Refuse to add measurements from another machine, unless sweep.allow_other_machine."""
    machines = dict(study.user_attrs.get(MACHINES_ATTR) or {})
    if machine.id in machines:
        return
    if not machines and not study.get_trials(deepcopy=False):
        # a worker started at the same moment created the study, and is still describing it
        study.set_user_attr(MACHINES_ATTR, {machine.id: _machine_record(machine)})
        return
    if not cfg.sweep.allow_other_machine:
        first_id, first = next(iter(machines.items()), ("?", {}))
        diffs = ", ".join(machine.differences(first)) or "unrecorded machine"
        raise ConfigError(
            f"sweep.name={cfg.sweep.name} was measured on {describe_record(first)} "
            f"[{first_id}]; this machine differs ({diffs}), and resuming here would mix "
            "measurements that cannot be compared. Use another sweep.name, or "
            "sweep.allow_other_machine=true to add them anyway (the report then lists both)."
        )
    log.warning(
        "sweep %s: adding measurements from another machine, %s", cfg.sweep.name, machine.describe()
    )
    machines[machine.id] = _machine_record(machine)
    study.set_user_attr(MACHINES_ATTR, machines)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_alive(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine's worker: not ours to judge
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def tell(study: optuna.Study, trial: optuna.Trial | int, values=None, state=None) -> None:
    """``study.tell``, tolerating samplers that end a study by ``study.stop()`` (BruteForce does
    when the space is exhausted), which only works inside ``optimize``; the trial is stored
    before that call, and the sweep loop notices exhaustion itself."""
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def record_result(trial: optuna.Trial, result: dict[str, Any]) -> None:
    """Store a run's result on its trial: one attribute, so one write to the storage."""
    trial.set_user_attr(RESULT_ATTR, result)


def stored_result(trial: FrozenTrial) -> dict[str, Any]:
    """The result stored on ``trial`` ({} if none). Studies written before results were
    stored whole kept one attribute per figure and column; those are read back the same way."""
    attrs = trial.user_attrs
    if RESULT_ATTR in attrs:
        return attrs[RESULT_ATTR] or {}
    return from_columns(attrs)
