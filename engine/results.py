"""Turns every rank's records into the run's result: one JSON object, written atomically.

The figures and their meanings are declared in engine/result_schema.py; the result is checked
against it before it leaves this module.

Conventions: throughput counts the whole global batch; a step lasts as long as its slowest rank;
communication figures are per step and per rank, averaged over ranks; memory is the maximum
over ranks.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch

from engine.config import RunConfig
from engine.fileio import atomic_write_text
from engine.hf_shape import formula_notes
from engine.metrics.analytic import expected_comm_bytes
from engine.metrics.bandwidth import add_bandwidth, group_size
from engine.metrics.bandwidth import notes as comm_notes
from engine.metrics.flops import Peak, flops_per_token, hardware_flops_per_token
from engine.metrics.memory_model import predict_all
from engine.metrics.stats import median_ci
from engine.metrics.timeline import PARTS
from engine.metrics.timing import Spread
from engine.result_schema import SCHEMA_VERSION, conform
from engine.shapes import count_params
from engine.train import RankRecord, profile_window

# memory readings besides peak_mem_bytes (metrics/memory.py): CUDA's reserved bytes and
# allocator retries, the CPU's resident set; null on the device that has no such reading
OTHER_MEMORY = ("peak_reserved_bytes", "alloc_retries", "rss_bytes")


def timed_steps(
    cfg: RunConfig, first_step: int = 0, end: int | None = None
) -> tuple[list[int], bool]:
    """Indexes (into this run's per-step lists) of the steps whose times enter the throughput
    statistics, and whether the profiler ran in them. ``end``: the step the run ended before
    (default ``train.steps``)."""
    end = cfg.train.steps if end is None else end
    prof_start, _ = profile_window(cfg, first_step, end)
    warm = cfg.train.warmup_steps
    steps = list(range(warm, prof_start - first_step))
    if steps:
        return steps, False
    return list(range(warm, end - first_step)), True


def tokens_per_step(cfg: RunConfig) -> int:
    """Tokens one step trains: the whole global batch (throughput counts all of it)."""
    return cfg.train.global_batch * cfg.model.seq_len


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _comm_average(records: list[RankRecord]) -> dict[str, Any]:
    per_rank = [r.comm for r in records if r.comm is not None]
    if not per_rank:  # no profiled step: not measured, which is not zero
        return {"count": None, "bytes": None, "time_s": None, "kinds": None}
    kinds = sorted({k for c in per_rank for k in c["kinds"]})
    zero = {"count": 0.0, "bytes": 0.0, "time_s": 0.0}
    return {
        "count": _mean([c["count"] for c in per_rank]),
        "bytes": _mean([c["bytes"] for c in per_rank]),
        "time_s": _mean([c["time_s"] for c in per_rank]),
        "kinds": {
            k: {f: _mean([c["kinds"].get(k, zero)[f] for c in per_rank]) for f in zero}
            for k in kinds
        },
    }


def _breakdown(records: list[RankRecord]) -> dict[str, Any]:
    """The step-time breakdown of the profiled steps, averaged over ranks, with each rank's,
    and how far the parts' sum lies from the stopwatch's step time (the check of its cover)."""
    ranks = [r for r in records if r.breakdown is not None]  # none: no profiled step
    parts = {k: _mean([r.breakdown[k] for r in ranks]) for k in PARTS} if ranks else None
    step = _mean([r.profiled_step_s for r in ranks]) if ranks else None
    n = min((len(r.comm_busy_steps_s) for r in ranks), default=0)
    return {
        "breakdown": parts,
        "breakdown_per_rank": [r.breakdown for r in ranks],
        # per profiled step, mean over ranks: seconds some collective is in flight, and exposed
        "comm_busy_s_steps": [_mean([r.comm_busy_steps_s[i] for r in ranks]) for i in range(n)],
        "comm_exposed_s_steps": [
            _mean([r.comm_exposed_steps_s[i] for r in ranks]) for i in range(n)
        ],
        "breakdown_step_s": step,
        # (sum of the parts - the stopwatch's step time) / the stopwatch's step time
        "breakdown_sum_error": (sum(parts.values()) - step) / step if parts and step else None,
    }


def _calls(records: list[RankRecord]) -> dict[str, float] | None:
    per_rank = [r.comm_calls for r in records if r.comm_calls is not None]
    if not per_rank:
        return None
    kinds = sorted({k for c in per_rank for k in c})
    return {k: _mean([c.get(k, 0.0) for c in per_rank]) for k in kinds}


def _memory_prediction(cfg: RunConfig, records: list[RankRecord], device: str) -> dict[str, Any]:
    """The analytic peak next to the measured one: on CUDA the allocator's peak, on CPU the
    tensor-only peak of the profiled steps (VmHWM includes the runtime; metrics/memory.py)."""
    predictions = predict_all(cfg, device)
    per_rank = [predictions[r.rank].total for r in records]
    top = max(records, key=lambda r: predictions[r.rank].total)
    if device == "cuda":
        measured, key = [r.memory.get("peak_mem_bytes") for r in records], "peak_mem_bytes"
    else:
        measured, key = [r.tensor_peak_bytes for r in records], "tensor_peak_bytes"
    known = all(m is not None for m in measured)
    compared = max(measured) if known and measured else None
    return {
        "predicted_peak_mem_bytes": max(per_rank),
        "predicted_peak_mem_bytes_per_rank": per_rank,
        "mem_breakdown": predictions[top.rank].to_dict(),
        "tensor_peak_bytes": max(measured) if known and device != "cuda" else None,
        "tensor_peak_bytes_per_rank": measured if device != "cuda" else [],
        # the measured figure the prediction is compared with, like with like (None: no
        # such measurement in this run, and then no error either)
        "mem_prediction_compared_to": key,
        "mem_compared_bytes": compared,
        # (predicted - measured) / measured, of the largest rank of each
        "mem_prediction_error": (max(per_rank) - compared) / compared if compared else None,
    }


def _not_measured(
    cfg: RunConfig, *, with_profiler: bool, device: str, peak: Peak
) -> dict[str, str]:
    """Figure -> why this run has no value for it. A null figure is never a zero."""
    out: dict[str, str] = {}
    if not with_profiler:
        why = (
            f"no profiled step (measure.profile_steps={cfg.measure.profile_steps}, "
            f"{cfg.train.steps - cfg.train.warmup_steps} measured steps)"
        )
        keys = ["comm_count", "comm_bytes", "comm_time_s", "comm", "comm_exposed_s", "breakdown"]
        keys += ["breakdown_step_s", "breakdown_sum_error"]
        if device != "cuda":  # the CPU tensor peak comes from the profiler's memory events
            keys += ["tensor_peak_bytes", "mem_compared_bytes", "mem_prediction_error"]
        out.update(dict.fromkeys(keys, why))
    if device == "cuda":
        out["tensor_peak_bytes"] = "CPU only (on CUDA the allocator's peak_mem_bytes is compared)"
    if not peak.flops:
        why = peak.note or "no peak FLOP/s known for this device"
        out.update(dict.fromkeys(("mfu", "hfu"), why))
    return out


def build_result(
    cfg: RunConfig, records: list[RankRecord], *, peak: Peak, device: torch.device
) -> dict[str, Any]:
    """The run JSON (see README, "Run results") from the records of all ranks."""
    peak_flops = peak.flops
    records = sorted(records, key=lambda r: r.rank)
    n_steps = min(len(r.losses) for r in records)
    # data-parallel ranks hold equal shares of the global batch: the global mean is their mean
    # (tensor-parallel peers hold the same value; only last pipeline stages compute a loss)
    with_loss = [r for r in records if r.has_loss]
    losses = [_mean([r.losses[s] for r in with_loss]) for s in range(n_steps)]
    step_times = [max(r.step_times_s[s] for r in records) for s in range(n_steps)]
    diverged = [r.diverged_at for r in records if r.diverged_at is not None]
    n_tokens = tokens_per_step(cfg)
    fpt = flops_per_token(cfg.model)
    result: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "status": "nan" if diverged else "ok",
        "losses": losses,
        "grad_norms": [r for r in records[0].grad_norms[:n_steps]],
        "first_step": records[0].first_step,
        "skipped_steps": records[0].skipped_steps,
        "skipped_steps_per_rank": [r.skipped_steps for r in records],
        "loss_scale": records[0].loss_scale,
        "n_params": count_params(cfg.model)["total"],
        "flops_per_token": fpt,
        "model_notes": formula_notes(cfg.model),
        "world_size": cfg.parallel.n_ranks,
        "tokens_per_step": n_tokens,
        "device": device.type,
        "backend": "nccl" if device.type == "cuda" else "gloo",
        "torch_version": torch.__version__,
        "host": platform.node(),
        "config": cfg.to_dict(),
    }
    if diverged:
        result["error"] = f"loss diverged (NaN/inf) at step {min(diverged)}"
        return conform(result)

    first = records[0].first_step
    # a run that measured enough (measure.target_ci) ends before train.steps
    steps, with_profiler = timed_steps(cfg, first, end=min(first + n_steps, cfg.train.steps))
    time_spread = Spread.of([step_times[s] for s in steps])
    tps = Spread.of([n_tokens / step_times[s] for s in steps])
    ci = median_ci([n_tokens / step_times[s] for s in steps])
    comm = _comm_average(records)
    if comm["kinds"] is not None:
        add_bandwidth(comm["kinds"], group_size(cfg))
        for kind, stats in comm["kinds"].items():
            stats["exposed_s"] = _mean(
                [(r.comm_exposed_kinds or {}).get(kind, 0.0) for r in records]
            )
    breakdown = _breakdown(records)
    peaks = [r.memory["peak_mem_bytes"] for r in records]
    achieved = fpt * tps.median  # model FLOP/s over all ranks
    result.update(
        {
            "tokens_per_s": tps.median,
            "tokens_per_s_min": tps.min,
            "tokens_per_s_max": tps.max,
            # distribution-free interval of the median over timed steps (95% where the
            # number of steps allows), its actual coverage, and the steps' spread
            "tokens_per_s_ci": [ci.low, ci.high],
            "tokens_per_s_ci_coverage": ci.coverage,
            "tokens_per_s_cv": ci.cv,
            "tokens_per_s_repeats": [tps.median],
            "repeats": 1,
            "step_time_s": time_spread.median,
            "step_time_s_min": time_spread.min,
            "step_time_s_max": time_spread.max,
            "step_times_s": step_times,
            "timed_steps": steps,
            "timing_includes_profiler": with_profiler,
            "data_time_s": _mean([max(r.data_times_s[s] for r in records) for s in steps]),
            "peak_mem_bytes": max(peaks),
            "peak_mem_bytes_per_rank": peaks,
            **{
                key: max(r.memory.get(key, 0) for r in records)
                if key in records[0].memory
                else None
                for key in OTHER_MEMORY
            },
            "mem_method": "cuda_allocator" if device.type == "cuda" else "vmhwm",
            # with no unprofiled measured step, the peak includes the profiler's buffers
            "mem_includes_profiler": with_profiler,
            **breakdown,
            **_memory_prediction(cfg, records, device.type),
            # collectives in flight while the rank computes nothing (pipeline sends and
            # receives count as bubble instead; see metrics/timeline.py)
            "comm_exposed_s": breakdown["breakdown"]["comm_exposed"]
            if breakdown["breakdown"]
            else None,
            # the second count of collectives, at the process-group API (measure.count_calls)
            "comm_calls": _calls(records),
            "comm_delay_ms": cfg.debug.comm_delay_ms,
            "comm_delay_inline": sum(r.inline_delays for r in records),
            "comm_count": comm["count"],
            "comm_bytes": comm["bytes"],
            "comm_time_s": comm["time_s"],
            "comm": comm["kinds"],
            # the analytic volume per kind (metrics/volumes.py), as this backend runs it
            "comm_bytes_analytic": expected_comm_bytes(cfg, backend=result["backend"]),
            "comm_unknown_dtypes": sorted({d for r in records for d in r.unknown_comm_dtypes}),
            "comm_notes": comm_notes(cfg, result["backend"], comm["kinds"]),
            "peak_flops_per_device": peak_flops,
            "peak_flops_source": peak.source,
            "mfu_note": peak.note,
            "mfu": achieved / (peak_flops * cfg.parallel.n_ranks) if peak_flops else None,
            # hardware FLOPs utilisation: the same, counting activation recomputation
            "hfu": (
                hardware_flops_per_token(cfg.model, cfg.train.activation_checkpointing)
                * tps.median
                / (peak_flops * cfg.parallel.n_ranks)
                if peak_flops
                else None
            ),
            "final_loss": losses[-1],
            "not_measured": _not_measured(
                cfg,
                with_profiler=bool(breakdown["breakdown"]),
                device=device.type,
                peak=peak,
            ),
            # checkpoint I/O, slowest rank: mean seconds per save, and the one load on resume
            "ckpt_save_s": _mean(
                [max(r.ckpt_save_s[i] for r in records) for i in range(len(records[0].ckpt_save_s))]
            )
            or None,
            "ckpt_load_s": max((r.ckpt_load_s or 0.0) for r in records) or None,
            # torch.compile's wall time, slowest rank: spent in the untimed warmup steps
            "compile_s": max(r.compile_s for r in records),
        }
    )
    return conform(result)


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> None:
    """The result JSON, whole or not at all (engine.fileio)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True))
