"""What one rank measured over a run, and which of its steps run under the profiler."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.config import RunConfig


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
    compile_s: float = 0.0  # torch.compile's wall time in this rank (train.compile)


def profile_window(cfg: RunConfig, first_step: int = 0, end: int | None = None) -> tuple[int, int]:
    """[first, last) steps run under the profiler: the last ``profile_steps`` measured steps
    of a run that starts at ``first_step`` (later than 0 when resumed) and ends before ``end``
    (default ``train.steps``; earlier when ``measure.target_ci`` ended the timed steps)."""
    end = cfg.train.steps if end is None else end
    measured = end - first_step - cfg.train.warmup_steps
    n = max(0, min(cfg.measure.profile_steps, measured))
    return end - n, end
