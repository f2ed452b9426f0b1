"""The sweep loop: ask Optuna for a layout, prune or launch it, record what happened, report."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from engine.config import ConfigError
from tuner import early_stop, guided_sweep, heartbeat, placement, workers
from tuner import space as space_mod
from tuner.config import Loaded, replace_keys
from tuner.confirm import confirm
from tuner.feasibility import MARGIN_ATTR, Infeasible, after_oom, runnable, uses_cuda
from tuner.launch import run_trial
from tuner.outputs import (
    OutputError,
    check_dir,
    describe,
    disk_full,
    disk_full_detail,
    out_of_space,
    remove_partial,
)
from tuner.progress import Progress, final_lines, header
from tuner.recovery import recover_interrupted, requeue
from tuner.report import write_report
from tuner.study import (
    LAYOUT_ATTR,
    MACHINE_ATTR,
    WORKER_ATTR,
    open_study,
    sweep_dir,
    tell,
    worker_id,
)
from tuner.sweep_checks import check_objectives, check_some_layout_runs, sweep_space
from tuner.trial_record import finish

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
DISK_FULL = "disk_full"  # fail_reason of a trial stopped by a full disk; measured again on resume
# trials that ended without deciding their configuration: it may be proposed again
NOT_RUN = ("interrupted", DISK_FULL, "claimed", "surplus")
# progress statuses of trials that measured nothing new
UNPRODUCTIVE = ("pruned", "claimed", "repeat")
# a sampler that keeps proposing measured or infeasible layouts has converged, or the space
# holds few runnable layouts
MAX_UNPRODUCTIVE_IN_A_ROW = 50


def _decided(t: FrozenTrial) -> bool:
    """A configuration settled by this trial: launched or pruned, not a repeat or interrupted."""
    return (
        t.state in FINISHED
        and "duplicate_of" not in t.user_attrs
        and t.user_attrs.get("fail_reason") not in NOT_RUN
    )


def _counts(t: FrozenTrial) -> bool:
    """Trials that count toward sweep.n_trials: launched ones (pruned layouts cost nothing;
    those stopped early were launched)."""
    return _decided(t) and (t.state != TrialState.PRUNED or early_stop.stopped_early(t))


def _earlier_same(study: optuna.Study, key: str, number: int) -> FrozenTrial | None:
    """An earlier measured trial that ran the same configuration (see space.layout_key)."""
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        if t.number != number and _decided(t) and t.user_attrs.get(LAYOUT_ATTR) == key:
            return t
    return None


def _launched(study: optuna.Study) -> int:
    """Trials toward the budget: decided ones, and those other live workers are running."""
    done = sum(_counts(t) for t in study.get_trials(deepcopy=False))
    return done + workers.running_elsewhere(study)


def _drop(study: optuna.Study, trial: optuna.Trial, reason: str, detail: str) -> None:
    """A trial this worker will not run; it decides nothing (NOT_RUN)."""
    trial.set_user_attr("fail_reason", reason)
    trial.set_user_attr("fail_detail", detail)
    tell(study, trial, state=TrialState.PRUNED)


def _yield_to(study: optuna.Study, trial: optuna.Trial, claim: FrozenTrial) -> str:
    """Leave a configuration to the earlier trial that runs it: not measured twice, and not
    measured while the other measures it on the same machine."""
    trial.set_user_attr("duplicate_of", claim.number)
    _drop(study, trial, "claimed", f"trial {claim.number} runs this configuration")
    return f"claimed by trial {claim.number} ({claim.state.name.lower()})"


def _reuse(study: optuna.Study, trial: optuna.Trial, earlier: FrozenTrial) -> str:
    """Record a repeat of ``earlier`` without running it again (Optuna's advice for duplicates)."""
    trial.set_user_attr("duplicate_of", earlier.number)
    for key, value in earlier.user_attrs.items():
        # the machine too: the figures are the earlier trial's, measured there
        if key not in (WORKER_ATTR, "duplicate_of", LAYOUT_ATTR):
            trial.set_user_attr(key, value)
    if earlier.state == TrialState.COMPLETE:
        tell(study, trial, earlier.values)
    else:
        tell(study, trial, state=earlier.state)
    return f"repeat of trial {earlier.number}"


def run_sweep(cfg: Loaded, *, echo: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) the sweep; returns the report's path."""
    echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if cfg.run.checkpoint.resume:
        raise ConfigError(
            "`checkpoint.resume=true` resumes one run; a sweep resumes by rerunning its command "
            "with the same sweep.name. Remove checkpoint.resume."
        )
    placement.use_devices(cfg)  # before torch looks at CUDA, here or in the checks below
    space = sweep_space(cfg)
    check_objectives(cfg, space)
    guided_sweep.check(cfg)
    check_some_layout_runs(cfg, space)
    out = sweep_dir(cfg)
    # before the study and the first trial: a folder that cannot be written fails now, not
    # after an hour of measuring
    check_dir(out, key="sweep.out_dir", value=str(cfg.sweep.out_dir))
    with placement.worker_cores(cfg) as cpus:  # before the machine is described: it counts them
        return _sweep(cfg, space, out, cpus, echo)


def _sweep(
    cfg: Loaded,
    space: space_mod.SearchSpace,
    out: Path,
    cpus: list[int],
    echo: Callable[[str], None],
) -> Path:
    searched = list(space.distributions)
    study, machine = open_study(cfg, space.distributions)
    recover_interrupted(study)
    decided = sum(_decided(t) for t in study.get_trials(deepcopy=False))
    index = workers.register(study)
    seed = workers.reseed(study, cfg, index=index, decided=decided)
    progress = Progress(
        cfg.sweep.n_trials, cfg.sweep.objectives[0], echo, base=cfg.run, counts=_counts
    )
    echo(header(cfg.sweep.name, searched, out, cfg.run))
    for setting in space_mod.fixed_by_command_line(cfg.space, cfg.overrides)[1]:
        echo(f"{setting} fixed by the command line; not searched")
    echo(f"measuring on {machine.describe()}")
    if cfg.launcher.cpus or cfg.launcher.devices:
        gpus = cfg.launcher.devices or "all"
        echo(f"trials run on cores {placement.ranges(cpus)}, GPUs {gpus}")
    if index:
        echo(f"worker {index + 1} on this study; sampler seed {seed}")
    s = cfg.sweep
    why = early_stop.unused(
        enabled=s.early_stop, objectives=s.objectives, launcher=cfg.launcher.name
    )
    if why and any(o.startswith("sweep.early_stop=") for o in cfg.overrides):
        echo(why)  # asked for on the command line: say that it does nothing here
    done = sum(_counts(t) for t in study.get_trials(deepcopy=False))
    if done >= cfg.sweep.n_trials:
        echo(f"{done}/{cfg.sweep.n_trials} trials done; raise sweep.n_trials to add more")
    repeats, layouts = 0, space.distinct_layouts(cfg.run)
    should_stop = guided_sweep.prepare(cfg, study, space, echo)
    while _launched(study) < cfg.sweep.n_trials:
        recover_interrupted(study)  # trials of workers that died meanwhile, here or elsewhere
        why = should_stop(study) if should_stop else None
        if why:
            echo(why)
            break
        trials = study.get_trials(deepcopy=False)
        tried = {t.user_attrs.get(LAYOUT_ATTR) for t in trials if _decided(t)}
        if layouts is not None and layouts <= tried:
            echo(f"every one of the {len(layouts)} distinct configurations has been tried")
            break
        if repeats >= MAX_UNPRODUCTIVE_IN_A_ROW:
            echo(
                f"the sampler proposed only measured or infeasible configurations {repeats} "
                "times in a row; stopping"
            )
            break
        trial = heartbeat.ask(study, space.distributions)
        try:
            with heartbeat.beating(study, trial._trial_id):
                status = _take(cfg, study, trial, machine.id, out)
        except UpdateFinishedTrialError:  # its heartbeats did not reach the storage in time
            status = "ended by another worker, which found it stale; queued again"
        if status is None:  # another worker took the last trial of the budget
            break
        repeats = repeats + 1 if status.startswith(UNPRODUCTIVE) else 0
        progress.line(study, trial, status)
    confirm(cfg, study, out, echo)
    report = write_report(study, out)
    for line in final_lines(study, out):
        echo(line)
    echo(f"report: {report}")
    return report


def _take(
    cfg: Loaded, study: optuna.Study, trial: optuna.Trial, machine_id: str, out: Path
) -> str | None:
    """Claim the trial's configuration and measure it, or leave it to the trial that has it;
    returns the progress line's status (None: over the budget, not run)."""
    trial.set_user_attr(WORKER_ATTR, worker_id())
    key = space_mod.layout_key(cfg.run, trial.params)
    trial.set_user_attr(LAYOUT_ATTR, key)  # first: other workers wait for it (claim_holder)
    trial.set_user_attr(MACHINE_ATTR, machine_id)
    done = sum(_counts(t) for t in study.get_trials(deepcopy=False))
    if done + workers.ahead(study, trial.number) >= cfg.sweep.n_trials:
        # another worker took the last trial of the budget between our check and our ask
        _drop(study, trial, "surplus", "the budget was reached by other workers' trials")
        return None
    claim = workers.claim_holder(study, key, trial.number)
    if claim is not None:  # another worker runs this configuration, or will
        return _yield_to(study, trial, claim)
    earlier = _earlier_same(study, key, trial.number)
    if earlier is not None:
        return _reuse(study, trial, earlier)
    for name, value in placement.load_at_start().items():
        trial.set_user_attr(name, value)
    return _run_one(cfg, study, trial, out)


def _run_one(cfg: Loaded, study: optuna.Study, trial: optuna.Trial, out: Path) -> str:
    run_cfg = replace_keys(cfg.run, trial.params)
    margin = study.user_attrs.get(MARGIN_ATTR, 1.0)
    try:
        run_cfg = runnable(run_cfg, cfg.launcher, margin=margin)
    except Infeasible as err:
        trial.set_user_attr("fail_reason", err.reason)
        trial.set_user_attr("fail_detail", str(err))
        tell(study, trial, state=TrialState.PRUNED)
        return f"pruned ({err.reason}: {err})"
    t0 = time.monotonic()
    trial_dir = out / "trials" / f"{trial.number:04d}"
    if run_cfg.checkpoint.every:  # each trial saves into its own folder: save time is measured
        run_cfg = replace_keys(run_cfg, {"checkpoint.dir": str(trial_dir / "checkpoints")})
    try:
        gpus = run_cfg.parallel.n_ranks if uses_cuda(run_cfg) else 0
        with placement.holding_gpus(cfg, gpus, what=f"trial {trial.number}"):
            outcome = run_trial(
                run_cfg, trial_dir=trial_dir, launcher=cfg.launcher, watch=_watch(cfg, study, trial)
            )
    except KeyboardInterrupt:
        trial.set_user_attr("fail_reason", "interrupted")
        trial.set_user_attr("fail_detail", f"interrupted after {time.monotonic() - t0:.1f}s")
        tell(study, trial, state=TrialState.FAIL)
        requeue(study, trial)
        write_report(study, out)
        raise
    except OSError as err:  # the sweep's own writes into the trial folder
        if not disk_full(err):
            raise
        detail = describe(err, where=trial_dir)
        _stop_on_full_disk(study, trial, out, detail, lambda: _fail(study, trial, detail))
    if not outcome.ok and (disk_full_detail(outcome.detail) or out_of_space(trial_dir)):
        # a rank's writes; its log may be empty, as there was no room to write the error
        if not disk_full_detail(outcome.detail):
            outcome.detail = f"{trial_dir}: no space left on device ({outcome.detail})"
        outcome.reason = DISK_FULL
        record = lambda: finish(study, trial, outcome, cfg.sweep.objectives)  # noqa: E731
        _stop_on_full_disk(study, trial, out, outcome.detail, record)
    if outcome.reason == "oom":
        outcome.detail += " " + after_oom(study, run_cfg, cfg.launcher, margin)
    return finish(study, trial, outcome, cfg.sweep.objectives)


def _watch(cfg: Loaded, study: optuna.Study, trial: optuna.Trial) -> early_stop.Watch | None:
    """What follows the trial's steps to stop it early (tuner/early_stop.py); the local
    launcher's ranks only, whose progress files this process reads."""
    s = cfg.sweep
    if not s.early_stop or early_stop.unused(
        enabled=True, objectives=s.objectives, launcher=cfg.launcher.name
    ):
        return None
    return early_stop.Watch(study, trial, min_steps=s.early_stop_min_steps)


def _fail(study: optuna.Study, trial: optuna.Trial, detail: str) -> None:
    trial.set_user_attr("fail_reason", DISK_FULL)
    trial.set_user_attr("fail_detail", detail)
    tell(study, trial, state=TrialState.FAIL)


def _stop_on_full_disk(
    study: optuna.Study, trial: optuna.Trial, out: Path, detail: str, record: Callable[[], object]
) -> NoReturn:
    """End the sweep on a full disk: the trial is recorded as failed and queued again (it was
    not the layout's fault), then one line says why. The study may sit on the full disk too;
    a trial that cannot be recorded stays RUNNING and is recovered on resume."""
    try:
        record()
        requeue(study, trial)
        note = f"trial {trial.number} is recorded as failed ({DISK_FULL})"
    except Exception as err:
        note = f"trial {trial.number} could not be recorded ({type(err).__name__})"
    remove_partial(out / "trials" / f"{trial.number:04d}")  # and frees room for the report
    try:
        write_report(study, out)
    except OutputError:
        note += "; the report was not rewritten"
    raise OutputError(
        f"sweep stopped, disk full: {detail}; {note}. Free space and run the same command "
        "to resume."
    )
