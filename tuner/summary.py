"""A readable summary of one run's result, for `python -m tuner run`.

Figures are read through the result schema (engine/result_schema.py): a name it does not
declare is an error here, never a line that silently says "not measured".
"""

from __future__ import annotations

from typing import Any

from engine.config import RunConfig
from engine.result_schema import figure
from engine.units import MIB
from tuner.layout_name import layout_name


def _row(name: str, value: str) -> str:
    return f"  {name:<22} {value}"


def _throughput(r: dict[str, Any]) -> str:
    low, high = r["tokens_per_s_ci"]
    repeats = figure(r, "repeats") or 1
    # a merged result keeps each launch's timed steps (a list per launch)
    n = sum(map(len, r["timed_steps"])) if repeats > 1 else len(r["timed_steps"])
    runs = f" in {repeats} runs" if repeats > 1 else ""
    profiled = (
        "; timed steps ran under the profiler (no unprofiled measured step)"
        if figure(r, "timing_includes_profiler")
        else ""
    )
    return (
        f"{r['tokens_per_s']:,.0f} median, {100 * r['tokens_per_s_ci_coverage']:.0f}% interval "
        f"[{low:,.0f}, {high:,.0f}], CV {100 * r['tokens_per_s_cv']:.1f}% over {n} steps{runs}"
        f"{profiled}"
    )


def _not_measured(r: dict[str, Any], key: str) -> str:
    figure(r, key)  # a declared figure, or the reason would never be found
    why = (figure(r, "not_measured") or {}).get(key, "no value in the result")
    return f"not measured: {why}"


def format_run(r: dict[str, Any]) -> str:
    cfg = r["config"]
    t, m = cfg["train"], cfg["model"]
    layout = layout_name(RunConfig.from_dict(cfg))  # named as the sweep's report names it
    if figure(r, "mfu") is not None:
        mfu = f"{100 * r['mfu']:.1f}% of {r['peak_flops_per_device']:.3g} FLOP/s per device"
    else:
        mfu = _not_measured(r, "mfu")
    losses = r["losses"]
    lines = [
        f"model {m['name']} ({r['n_params'] / 1e6:.2f}M params), {layout}, "
        f"global_batch={t['global_batch']} on {r['world_size']} {r['device']} rank(s)",
        _row("tokens/s", _throughput(r)),
        _row("step time", f"{1e3 * r['step_time_s']:.1f} ms (median)"),
        _row(
            "peak memory",
            f"{r['peak_mem_bytes'] / MIB:,.1f} MiB (max over ranks, {r['mem_method']})",
        ),
        _row(
            "communication/step",
            f"{r['comm_count']:.0f} collectives, "
            f"{r['comm_bytes'] / MIB:.2f} MiB, {1e3 * r['comm_time_s']:.1f} ms (per rank)"
            if figure(r, "comm_count") is not None
            else _not_measured(r, "comm_count"),
        ),
        _row(
            "MFU",
            mfu + (f" (HFU {100 * r['hfu']:.1f}%)" if r["hfu"] and r["hfu"] != r["mfu"] else ""),
        ),
        _row("loss", f"{losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps"),
    ]
    lines += _measurements(r)
    if figure(r, "first_step"):
        lines.append(
            _row("resumed at step", f"{r['first_step']} ({r['ckpt_load_s']:.2f} s to load)")
        )
    if figure(r, "ckpt_save_s"):
        lines.append(_row("checkpoint save", f"{r['ckpt_save_s']:.2f} s per save"))
    if figure(r, "loss_scale") is not None:
        lines.append(
            _row("fp16 loss scale", f"{r['loss_scale']:g}, {r['skipped_steps']} step(s) skipped")
        )
    for kind, s in sorted((figure(r, "comm") or {}).items()):
        exposed = f", {1e3 * s['exposed_s']:.1f} ms exposed" if "exposed_s" in s else ""
        lines.append(
            _row(
                f"  {kind}",
                f"{s['count']:.0f} x, {s['bytes'] / MIB:.2f} MiB, {1e3 * s['time_s']:.1f} ms"
                + exposed,
            )
        )
    if figure(r, "comm_calls") is not None:
        counted = ", ".join(f"{k} {v:g}" for k, v in r["comm_calls"].items())
        lines.append(_row("counted at the group", counted or "none"))
    return "\n".join(lines)


def _measurements(r: dict[str, Any]) -> list[str]:
    """The step-time breakdown and the memory prediction, when the run has them."""
    lines = []
    parts = figure(r, "breakdown")
    if parts:
        shown = ", ".join(f"{k.replace('_', ' ')} {1e3 * v:.1f}" for k, v in parts.items())
        lines.append(
            _row(
                "step breakdown (ms)",
                f"{shown} = {1e3 * sum(parts.values()):.1f} vs stopwatch "
                f"{1e3 * r['breakdown_step_s']:.1f} (profiled steps)",
            )
        )
    if figure(r, "predicted_peak_mem_bytes") is not None:
        measured, error = figure(r, "mem_compared_bytes"), figure(r, "mem_prediction_error")
        vs = (
            f" vs measured {measured / MIB:,.1f} ({r['mem_prediction_compared_to']}), "
            f"error {100 * error:+.1f}%"
            if measured and error is not None
            else f"; {r['mem_prediction_compared_to']} {_not_measured(r, 'mem_compared_bytes')}"
        )
        split = ", ".join(f"{k} {v / MIB:.1f}" for k, v in r["mem_breakdown"].items())
        lines.append(
            _row("predicted memory", f"{r['predicted_peak_mem_bytes'] / MIB:,.1f} MiB{vs}")
        )
        lines.append(_row("  predicted parts", f"{split} MiB"))
    return lines
