"""What happens around the training steps, apart from training: the measurements (memory
window, stopwatch, profiler window, collective counting), checkpoint cadence and resume, fault
injection (``debug.*``) and the final parameter dump.

The runner's loop (``engine.train``) and ``engine.Engine`` use the same pieces, so a library
user's run reports the runner's figures.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from engine.config import ConfigError, DebugConfig, RunConfig
from engine.metrics import comm
from engine.metrics.memory import PeakMemory, live_tensor_bytes, window_peak_bytes
from engine.metrics.profiler_events import read_events
from engine.metrics.timeline import DATA, STEP, Timeline
from engine.metrics.timing import Stopwatch
from engine.parallel.compile import compile_seconds
from engine.parallelize import Batch
from engine.progress_log import ProgressLog
from engine.record import RankRecord, profile_window
from engine.runtime import DistContext
from engine.state import gather_full_state
from engine.step import TrainStep, Update
from engine.timed_stop import TimedStop

log = logging.getLogger(__name__)


def _profiler(device: torch.device) -> profile:
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    # CPU: memory events give the tensor-only peak (metrics.memory); CUDA has allocator stats
    return profile(activities=activities, record_shapes=True, profile_memory=device.type == "cpu")


def _read_profile(record: RankRecord, events, *, n_steps: int) -> None:
    """Communication per kind, the step-time breakdown and exposed time, per profiled step."""
    events = list(events)
    summary = comm.summarize(events)
    record.comm = summary.per_step(n_steps)
    record.unknown_comm_dtypes = sorted(summary.unknown_dtypes)
    timeline = Timeline.from_events(events, comm.timeline_kind)
    record.breakdown = {k: v / n_steps for k, v in timeline.breakdown().items()}
    record.comm_exposed_kinds = {k: v / n_steps for k, v in timeline.exposed_by_kind().items()}
    record.comm_busy_steps_s, record.comm_exposed_steps_s = timeline.per_step()
    record.profiled_step_s = sum(record.step_times_s[-n_steps:]) / n_steps


class Measurement:
    """Fills ``record`` as steps run: the memory window opens after the warmup steps, the
    profiler (and the collective count) covers ``profile_window``, the stopwatch times each
    step and its data loading. Use ``step`` around a step, ``data`` around its data loading,
    then ``note`` its outcome and ``after`` it; ``finish`` (or leaving the ``with``) closes."""

    def __init__(
        self,
        cfg: RunConfig,
        ctx: DistContext,
        trainer: TrainStep,
        record: RankRecord,
        stop: TimedStop | None = None,
    ):
        self.cfg, self.device, self.record = cfg, ctx.device, record
        self.stop = stop  # measure.target_ci: may end the timed steps early (the runner's loop)
        self.end = cfg.train.steps  # the step the run ends before
        self.trainer, self.marks, self.counter = trainer, trainer.stepper.phases, ctx.call_counter
        self.memory = PeakMemory(self.device)
        self.watch, self.data_watch = Stopwatch(self.device), Stopwatch(self.device)
        self.window = profile_window(cfg, record.first_step)
        self.prof: profile | None = None
        self.calls_before, self.inline_before, self.live_at_start = None, 0, 0
        self.step_time = self.data_time = 0.0
        # dynamo's counters are per process: what this run compiles is the difference
        self.compiled_before, self.compiled_at_measure = compile_seconds(), None
        self.progress = ProgressLog(cfg.progress, rank=ctx.rank)

    def __enter__(self) -> Measurement:
        return self

    def __exit__(self, *exc) -> None:
        self.finish()

    def _begin(self, step: int) -> None:
        measured_from = self.record.first_step + self.cfg.train.warmup_steps
        if step == measured_from:
            self.memory.reset()
            self.compiled_at_measure = compile_seconds()
        start, end = self.window
        if step != start or start >= end:
            return
        if step > measured_from:  # the profiler's buffers are not the model's
            self.record.memory = self.memory.read()
        if self.device.type == "cpu":
            self.live_at_start = live_tensor_bytes(self.trainer.modules)
        self.prof = _profiler(self.device)
        self.prof.__enter__()
        self.marks.active = True
        if self.counter is not None:
            self.calls_before = self.counter.snapshot()
            self.inline_before = self.counter.inline_delays

    @contextlib.contextmanager
    def step(self, step: int) -> Iterator[None]:
        self._begin(step)
        self.watch.start()
        with self.marks(STEP):
            yield
        self.step_time = self.watch.stop()

    @contextlib.contextmanager
    def data(self) -> Iterator[None]:
        with self.marks(DATA):
            self.data_watch.start()
            yield
            self.data_time = self.data_watch.stop()

    def note(self, step: int, loss: torch.Tensor | None, update: Update) -> bool:
        """Record the step just timed; returns whether the run diverged on it."""
        r = self.record
        r.losses.append(loss.item() if loss is not None else float("nan"))
        r.grad_norms.append(update.norm_value)
        r.step_times_s.append(self.step_time)
        r.data_times_s.append(self.data_time)
        self.progress.append(step - r.first_step, self.step_time)  # after the stopwatch
        r.skipped_steps += 0 if update.applied else 1
        if update.diverged:
            r.diverged_at = step
        return update.diverged

    @contextlib.contextmanager
    def outside(self) -> Iterator[None]:
        """Work between steps that is no part of training (a checkpoint save, a loss report):
        left out of the profiled traffic and of the collective count."""
        counting = self.counter is not None and self.prof is not None
        before = (self.counter.snapshot(), self.counter.inline_delays) if counting else None
        with record_function(comm.EXCLUDED_REGION):
            yield
        if before is not None:
            self.calls_before = self.calls_before + (self.counter.snapshot() - before[0])
            self.inline_before += self.counter.inline_delays - before[1]

    def after(self, step: int) -> None:
        """Close the profiler after the window's last step and read what it saw."""
        start, end = self.window
        if self.prof is None and step + 1 < start and self.stop is not None:
            if self.stop.done(step, self.step_time):  # measured enough: profile next, then end
                n = end - start
                self.window, self.end = (step + 1, step + 1 + n), step + 1 + n
            return
        if self.prof is None or step != end - 1:
            return
        prof, r, n = self.prof, self.record, end - start
        prof.__exit__(None, None, None)
        self.prof, self.marks.active = None, False
        _read_profile(r, read_events(prof), n_steps=n)
        if self.device.type == "cpu" and (peak := window_peak_bytes(prof)) is not None:
            r.tensor_peak_bytes = self.live_at_start + peak
        if self.counter is not None:
            calls = self.counter.snapshot() - self.calls_before
            r.comm_calls = {k: v / n for k, v in calls.items()}
            r.inline_delays = self.counter.inline_delays - self.inline_before

    def ended(self, step: int) -> bool:
        """Whether ``step`` was the run's last (earlier than train.steps with target_ci)."""
        return step + 1 >= self.end

    def finish(self) -> None:
        self.progress.close()
        if self.prof is not None:  # left early: close it without using its partial window
            with contextlib.suppress(Exception):
                self.prof.__exit__(None, None, None)
            self.prof, self.marks.active = None, False
        if not self.record.memory:
            self.record.memory = self.memory.read()
        self.record.loss_scale = self.trainer.precision.loss_scale
        now = compile_seconds()
        self.record.compile_s = now - self.compiled_before
        timed = self.compiled_at_measure
        if timed is not None and now > timed:
            log.warning(
                "torch.compile ran %.2fs within the timed steps (a recompilation); their "
                "times include it: raise train.warmup_steps",
                now - timed,
            )


class Checkpointing:
    """Resumes from the newest checkpoint (``checkpoint.resume``), saves every
    ``checkpoint.every`` steps."""

    def __init__(self, cfg: RunConfig, trainer: TrainStep, record: RankRecord, *, rank: int):
        self.every, self.record, self.saver = cfg.checkpoint.every, record, None
        if cfg.checkpoint.dir:
            # distributed checkpointing's modules load only for runs that save (a quarter second)
            from engine.checkpoint import Checkpointer

            self.saver = Checkpointer(
                cfg, trainer.modules, trainer.optimizer, trainer.precision, rank=rank
            )
        if not cfg.checkpoint.resume:
            return
        record.first_step, record.ckpt_load_s = self.saver.load_latest()
        t = cfg.train
        if t.steps - record.first_step <= t.warmup_steps:
            raise ConfigError(
                f"resumed at step {record.first_step}: train.steps={t.steps} leaves no measured "
                f"step after train.warmup_steps={t.warmup_steps}; raise train.steps."
            )

    def after(self, step: int, measure: Measurement) -> None:
        if self.saver is None or not self.every or (step + 1) % self.every:
            return
        with measure.outside():  # outside the step's time and traffic
            self.record.ckpt_save_s.append(self.saver.save(step + 1))


class Faults:
    """Failures injected on purpose (``debug.*``), so failure handling is tested on real runs."""

    def __init__(self, debug: DebugConfig, *, rank: int) -> None:
        self.debug, self.rank = debug, rank

    def nan_loss(self, step: int) -> bool:
        return 0 <= self.debug.nan_at_step <= step

    def after_backward(self, step: int, params: list[torch.nn.Parameter]) -> None:
        if step == self.debug.fail_at_step:
            raise RuntimeError(f"injected failure at step {step} (debug.fail_at_step)")
        if step == self.debug.overflow_at_step and self.rank == 0:
            _poison_one_gradient(params)


def timed_step(
    measure: Measurement,
    trainer: TrainStep,
    step: int,
    load: Callable[[], Batch],
    faults: Faults | None = None,
) -> tuple[torch.Tensor | None, Update]:
    """One measured step: ``load`` this rank's micro-batches, forward and backward, update.
    Returns this rank's mean loss (None on pipeline stages without it) and the update."""
    with measure.step(step):
        with measure.data():
            micro = load()
        loss = trainer.backward(micro, corrupt=faults is not None and faults.nan_loss(step))
        if faults is not None:
            faults.after_backward(step, trainer.params)
        update = trainer.update()
    return loss, update


def _poison_one_gradient(params: list[torch.nn.Parameter]) -> None:
    """An overflow on one rank only: the loss scaler must notice it on every rank."""
    for p in params:
        if p.grad is not None:
            grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
            grad.view(-1)[0] = float("inf")
            return


def dump_params(path: str, trainer: TrainStep, ctx: DistContext) -> None:
    """Write the final, unsharded parameters to ``path`` (rank 0; every rank takes part)."""
    state = gather_full_state(trainer.modules, initialized=ctx.initialized)
    if ctx.is_main:
        torch.save(state, path)
