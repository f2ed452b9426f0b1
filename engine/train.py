"""The training loop of one rank: warmup steps, then measured steps, then per-rank records."""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from engine import parallelize
from engine.checkpoint import Checkpointer
from engine.config import ConfigError, RunConfig
from engine.data import SyntheticTokens
from engine.mesh import build_mesh
from engine.metrics import comm
from engine.metrics.memory import PeakMemory, live_tensor_bytes, window_peak_bytes
from engine.metrics.timeline import DATA, OPTIMIZER, STEP, Timeline
from engine.metrics.timing import Stopwatch
from engine.parallel import data as dp_wrap
from engine.parallel.grad_norm import clip_, total_norm
from engine.precision import Precision
from engine.runtime import DistContext
from engine.state import gather_full_state

log = logging.getLogger(__name__)

# fp16 loss scaling recovers from an overflow by skipping the step; this many skips in a row
# means the run has diverged rather than overflowed once.
MAX_CONSECUTIVE_SKIPS = 10


class Diverged(RuntimeError):
    """The loss or gradients became NaN/inf and loss scaling could not recover."""


@dataclass
class RankRecord:
    """What one rank measured; rank 0 gathers these from every rank."""

    rank: int
    has_loss: bool = True  # False on pipeline stages that do not compute the loss
    losses: list[float] = field(default_factory=list)  # this rank's mean loss per step
    step_times_s: list[float] = field(default_factory=list)
    data_times_s: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    skipped_steps: int = 0
    loss_scale: float | None = None
    memory: dict[str, int] = field(default_factory=dict)  # peaks over the unprofiled steps
    comm: dict | None = None  # per profiled step
    breakdown: dict[str, float] | None = None  # seconds per profiled step (metrics.timeline)
    comm_exposed_kinds: dict[str, float] | None = None  # exposed seconds per step, by kind
    profiled_step_s: float | None = None  # the stopwatch's mean over the profiled steps
    comm_busy_steps_s: list[float] = field(default_factory=list)  # per profiled step
    comm_exposed_steps_s: list[float] = field(default_factory=list)
    comm_calls: dict[str, float] | None = None  # per step, counted at the process group
    inline_delays: int = 0  # debug.comm_delay_ms delays that ran outside gloo's range
    tensor_peak_bytes: int | None = None  # CPU: tensors only, over the profiled steps
    unknown_comm_dtypes: list[str] = field(default_factory=list)
    diverged_at: int | None = None
    first_step: int = 0  # > 0 when resumed from a checkpoint
    ckpt_save_s: list[float] = field(default_factory=list)
    ckpt_load_s: float | None = None


def profile_window(cfg: RunConfig, first_step: int = 0) -> tuple[int, int]:
    """[first, last) steps run under the profiler: the last ``profile_steps`` measured steps
    of a run that starts at ``first_step`` (later than 0 when resumed)."""
    measured = cfg.train.steps - first_step - cfg.train.warmup_steps
    n = max(0, min(cfg.measure.profile_steps, measured))
    return cfg.train.steps - n, cfg.train.steps


def _profiler(device: torch.device) -> profile:
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    # CPU: memory events give the tensor-only peak (metrics.memory); CUDA has allocator stats
    return profile(activities=activities, record_shapes=True, profile_memory=device.type == "cpu")


def _poison_one_gradient(params: list[torch.nn.Parameter]) -> None:
    """An overflow on one rank only: the loss scaler must notice it on every rank."""
    for p in params:
        if p.grad is not None:
            grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
            grad.view(-1)[0] = float("inf")
            return


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


def train(cfg: RunConfig, ctx: DistContext) -> RankRecord:
    t, device = cfg.train, ctx.device
    mesh = build_mesh(cfg.parallel, ctx)
    precision = Precision(t.precision, device, growth_interval=t.loss_scale_growth_interval)
    stepper = parallelize.build(cfg, mesh, device, precision)
    params = stepper.parameters()
    optimizer = dp_wrap.make_optimizer(
        params, cfg.parallel, mesh, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay
    )
    data = SyntheticTokens(cfg.model.vocab_size, cfg.model.seq_len, t.seed, t.global_batch)
    memory, watch, data_watch = PeakMemory(device), Stopwatch(device), Stopwatch(device)
    record = RankRecord(rank=ctx.rank, has_loss=stepper.has_loss)
    ckpt = None
    if cfg.checkpoint.dir:
        ckpt = Checkpointer(cfg, stepper.modules, optimizer, precision, rank=ctx.rank)
    if cfg.checkpoint.resume:
        record.first_step, record.ckpt_load_s = ckpt.load_latest()
        if t.steps - record.first_step <= t.warmup_steps:
            raise ConfigError(
                f"resumed at step {record.first_step}: train.steps={t.steps} leaves no measured "
                f"step after train.warmup_steps={t.warmup_steps}; raise train.steps."
            )
    first = record.first_step
    prof_start, prof_end = profile_window(cfg, first)
    prof, consecutive_skips = None, 0

    marks, counter = stepper.phases, ctx.call_counter
    calls_before, inline_before, live_at_start = None, 0, 0
    for step in range(first, t.steps):
        if step == first + t.warmup_steps:
            memory.reset()
        if step == prof_start and prof_start < prof_end:
            if step > first + t.warmup_steps:  # the profiler's buffers are not the model's
                record.memory = memory.read()
            if device.type == "cpu":
                live_at_start = live_tensor_bytes(stepper.modules)
            prof = _profiler(device)
            prof.__enter__()
            marks.active = True
            if counter is not None:
                calls_before, inline_before = counter.snapshot(), counter.inline_delays
        watch.start()
        with marks(STEP):
            with marks(DATA):
                data_watch.start()
                micro = data.micro_batches(
                    step, dp_rank=mesh.dp_rank, dp=mesh.dp, micro_batch=t.micro_batch
                )
                micro = [(x.to(device), y.to(device)) for x, y in micro]
                data_time = data_watch.stop()
            corrupt = 0 <= cfg.debug.nan_at_step <= step
            loss = stepper.run(micro, corrupt=corrupt)
            if step == cfg.debug.fail_at_step:
                raise RuntimeError(f"injected failure at step {step} (debug.fail_at_step)")
            if step == cfg.debug.overflow_at_step and ctx.rank == 0:
                _poison_one_gradient(params)
            with marks(OPTIMIZER):
                precision.unscale(optimizer)
                norm = total_norm(params, mesh, device)
                clip_(params, norm, t.grad_clip)
                applied = precision.step(optimizer)
                optimizer.zero_grad(set_to_none=True)
        step_time = watch.stop()

        record.losses.append(loss.item() if loss is not None else float("nan"))
        record.grad_norms.append(norm.item())
        record.step_times_s.append(step_time)
        record.data_times_s.append(data_time)
        consecutive_skips = 0 if applied else consecutive_skips + 1
        record.skipped_steps += 0 if applied else 1
        # the norm is global (reduced over every split of the parameters), so every rank
        # reaches the same verdict on the same step without another collective
        diverged = not math.isfinite(record.grad_norms[-1])
        if precision.scaler is not None:
            diverged = consecutive_skips >= MAX_CONSECUTIVE_SKIPS
        if diverged:
            record.diverged_at = step
            break
        if ckpt is not None and cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0:
            with record_function(comm.EXCLUDED_REGION):  # outside the step's time and traffic
                record.ckpt_save_s.append(ckpt.save(step + 1))
        if prof is not None and step == prof_end - 1:
            prof.__exit__(None, None, None)
            marks.active = False
            _read_profile(record, prof.events(), n_steps=prof_end - prof_start)
            if device.type == "cpu" and (peak := window_peak_bytes(prof)) is not None:
                record.tensor_peak_bytes = live_at_start + peak
            if counter is not None:
                calls = counter.snapshot() - calls_before
                record.comm_calls = {k: v / (prof_end - prof_start) for k, v in calls.items()}
                record.inline_delays = counter.inline_delays - inline_before
            prof = None

    if prof is not None:  # left early: close the profiler without using its partial window
        with contextlib.suppress(Exception):
            prof.__exit__(None, None, None)
    if not record.memory:
        record.memory = memory.read()
    if cfg.debug.dump_params:
        state = gather_full_state(stepper.modules, initialized=ctx.initialized)
        if ctx.is_main:
            torch.save(state, cfg.debug.dump_params)
    record.loss_scale = precision.loss_scale
    return record
