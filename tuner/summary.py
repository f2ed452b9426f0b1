"""A readable summary of one run's result, for `python -m tuner run`."""

from __future__ import annotations

from typing import Any

MIB = 1024 * 1024


def _row(name: str, value: str) -> str:
    return f"  {name:<22} {value}"


def _throughput(r: dict[str, Any]) -> str:
    low, high = r["tokens_per_s_ci95"]
    n = len(r["timed_steps"]) * r.get("repeats", 1)
    runs = f" in {r['repeats']} runs" if r.get("repeats", 1) > 1 else ""
    return (
        f"{r['tokens_per_s']:,.0f} median, {100 * r['tokens_per_s_ci_coverage']:.0f}% interval "
        f"[{low:,.0f}, {high:,.0f}], CV {100 * r['tokens_per_s_cv']:.1f}% over {n} steps{runs}"
    )


def format_run(r: dict[str, Any]) -> str:
    cfg = r["config"]
    p, t, m = cfg["parallel"], cfg["train"], cfg["model"]
    layout = f"dp={p['dp']} tp={p['tp']} pp={p['pp']} zero={p['zero']}"
    if p["sp"]:
        layout += " sp"
    if p["pp"] > 1:
        layout += f" {p['pp_schedule']}"
        if p["pp_virtual_stages"] > 1:
            layout += f"x{p['pp_virtual_stages']}"
    if t["activation_checkpointing"] != "none":
        layout += f" ac={t['activation_checkpointing']}"
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
    losses = r["losses"]
    lines = [
        f"model {m['name']} ({r['n_params'] / 1e6:.2f}M params), {layout}, "
        f"micro_batch={t['micro_batch']} global_batch={t['global_batch']} {t['precision']} "
        f"on {r['world_size']} {r['device']} rank(s)",
        _row("tokens/s", _throughput(r)),
        _row("step time", f"{1e3 * r['step_time_s']:.1f} ms (median)"),
        _row(
            "peak memory",
            f"{r['peak_mem_bytes'] / MIB:,.1f} MiB (max over ranks, {r['mem_method']})",
        ),
        _row(
            "communication/step",
            f"{r['comm_count']:.0f} collectives, "
            f"{r['comm_bytes'] / MIB:.2f} MiB, {1e3 * r['comm_time_s']:.1f} ms (per rank)",
        ),
        _row(
            "MFU",
            f"{mfu} of {r['peak_flops_per_device']:.3g} FLOP/s per device"
            + (f" (HFU {100 * r['hfu']:.1f}%)" if r.get("hfu") and r["hfu"] != r["mfu"] else ""),
        ),
        _row("loss", f"{losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps"),
    ]
    if r.get("first_step"):
        lines.append(
            _row("resumed at step", f"{r['first_step']} ({r['ckpt_load_s']:.2f} s to load)")
        )
    if r.get("ckpt_save_s"):
        lines.append(_row("checkpoint save", f"{r['ckpt_save_s']:.2f} s per save"))
    if r.get("loss_scale") is not None:
        lines.append(
            _row("fp16 loss scale", f"{r['loss_scale']:g}, {r['skipped_steps']} step(s) skipped")
        )
    for kind, s in sorted(r.get("comm", {}).items()):
        lines.append(
            _row(
                f"  {kind}",
                f"{s['count']:.0f} x, {s['bytes'] / MIB:.2f} MiB, {1e3 * s['time_s']:.1f} ms",
            )
        )
    return "\n".join(lines)
