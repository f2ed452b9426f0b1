"""The training loop of one rank: warmup steps, then measured steps, then per-rank records."""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from engine.config import RunConfig
from engine.data import SyntheticTokens
from engine.dist import DistContext
from engine.metrics import comm
from engine.metrics.memory import PeakMemory
from engine.metrics.timing import Stopwatch
from engine.model import GPT
from engine.parallel import data as dp_wrap
from engine.precision import Precision

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
    losses: list[float] = field(default_factory=list)  # this rank's mean loss per step
    step_times_s: list[float] = field(default_factory=list)
    data_times_s: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    skipped_steps: int = 0
    loss_scale: float | None = None
    memory: dict[str, int] = field(default_factory=dict)  # peaks over the unprofiled steps
    comm: dict | None = None  # per profiled step
    unknown_comm_dtypes: list[str] = field(default_factory=list)
    diverged_at: int | None = None


def build_model(cfg: RunConfig, device: torch.device) -> GPT:
    """The same initial weights on every rank and in the single-process reference."""
    torch.manual_seed(cfg.train.seed)
    return GPT(cfg.model).to(device)


def profile_window(cfg: RunConfig) -> tuple[int, int]:
    """[first, last) steps run under the profiler: the last ``profile_steps`` measured steps."""
    n = min(cfg.measure.profile_steps, cfg.train.measured_steps)
    return cfg.train.steps - n, cfg.train.steps


def _profiler(device: torch.device) -> profile:
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    return profile(activities=activities, record_shapes=True)


def _total_norm(params: list[torch.nn.Parameter], clip: float) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    if clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip)
    return torch.nn.utils.get_total_norm(grads)


def train(cfg: RunConfig, ctx: DistContext) -> RankRecord:
    t, device = cfg.train, ctx.device
    model = dp_wrap.apply_data_parallel(build_model(cfg, device), cfg.parallel, device)
    params = list(dp_wrap.parameters(model))
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=t.betas, weight_decay=t.weight_decay)
    precision = Precision(t.precision, device)
    data = SyntheticTokens(cfg.model.vocab_size, cfg.model.seq_len, t.seed, t.global_batch)
    dp_rank = ctx.rank  # every rank is a data-parallel rank while tp = pp = 1
    memory, watch, data_watch = PeakMemory(device), Stopwatch(device), Stopwatch(device)
    prof_start, prof_end = profile_window(cfg)
    record = RankRecord(rank=ctx.rank)
    prof, consecutive_skips = None, 0

    for step in range(t.steps):
        if step == t.warmup_steps:
            memory.reset()
        if step == prof_start and prof_start < prof_end:
            if step > t.warmup_steps:  # the profiler's own buffers must not count as the model's
                record.memory = memory.read()
            prof = _profiler(device)
            prof.__enter__()
        watch.start()
        data_watch.start()
        micro = data.micro_batches(
            step, dp_rank=dp_rank, dp=cfg.parallel.dp, micro_batch=t.micro_batch
        )
        micro = [(x.to(device), y.to(device)) for x, y in micro]
        data_time = data_watch.stop()
        loss_sum = torch.zeros((), device=device)
        for i, (x, y) in enumerate(micro):
            last = i == len(micro) - 1
            with dp_wrap.no_sync(model, last_micro_batch=last):
                with precision.autocast():
                    logits = model(x)  # (B, T, vocab)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / len(micro)
                if step == cfg.debug.nan_at_step:
                    loss = loss * float("nan")
                precision.scale(loss).backward()
            loss_sum += loss.detach()
        if step == cfg.debug.fail_at_step:
            raise RuntimeError(f"injected failure at step {step} (debug.fail_at_step)")
        precision.unscale(optimizer)
        norm = _total_norm(params, t.grad_clip)
        applied = precision.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        step_time = watch.stop()

        record.losses.append(loss_sum.item())
        record.grad_norms.append(norm.item())
        record.step_times_s.append(step_time)
        record.data_times_s.append(data_time)
        consecutive_skips = 0 if applied else consecutive_skips + 1
        record.skipped_steps += 0 if applied else 1
        # gradients are identical on every data-parallel rank after the all-reduce, so every
        # rank reaches the same verdict on the same step without an extra collective
        diverged = not math.isfinite(record.grad_norms[-1])
        if precision.scaler is not None:
            diverged = consecutive_skips >= MAX_CONSECUTIVE_SKIPS
        if diverged:
            record.diverged_at = step
            break
        if prof is not None and step == prof_end - 1:
            prof.__exit__(None, None, None)
            summary = comm.summarize(prof.events())
            record.comm = summary.per_step(prof_end - prof_start)
            record.unknown_comm_dtypes = sorted(summary.unknown_dtypes)
            prof = None

    if prof is not None:  # left early: close the profiler without using its partial window
        with contextlib.suppress(Exception):
            prof.__exit__(None, None, None)
    if not record.memory:
        record.memory = memory.read()
    record.loss_scale = precision.loss_scale
    return record
