"""The plan in a terminal: the ranked table, why the rest cannot run, and how to verify."""

from __future__ import annotations

import collections
import shlex

from tuner.config import Loaded
from tuner.layout_name import layout_words
from tuner.perf.errors import ErrorBands
from tuner.planner.rank import PlanRow

GIB = 2**30


def describe(r: PlanRow) -> str:
    """The layout in the words a sweep's report names it by (tuner.layout_name)."""
    return layout_words(
        dp=r.dp,
        zero=r.zero,
        tp=r.tp,
        sp=r.sp,
        pp=r.pp,
        pp_schedule=r.pp_schedule,
        pp_virtual_stages=r.pp_virtual_stages,
        micro_batch=r.micro_batch,
        precision=r.precision,
        activation_checkpointing=r.activation_checkpointing,
    )


def _band(bands: ErrorBands, r: PlanRow) -> str:
    b = bands.for_row(r)
    return f"±{100 * b['mape']:.0f}%" if b else "unvalidated"


def _biggest_parts(r: PlanRow, n: int = 3) -> str:
    total = r.predicted_step_time_s or 1.0
    top = sorted(r.step_parts_s.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in top)


def table(rows: list[PlanRow], bands: ErrorBands) -> str:
    w = max([len(describe(r)) for r in rows] + [6])
    head = f"{'#':>3}  {'layout':<{w}} {'tokens/s':>12} {'MFU':>6} {'step s':>8} {'GiB/dev':>8}"
    lines = [head + "  error   where the time goes"]
    for i, r in enumerate(rows, 1):
        lines.append(
            f"{i:>3}  {describe(r):<{w}} {r.predicted_tokens_per_s:>12,.0f} "
            f"{100 * r.predicted_mfu:>5.1f}% {r.predicted_step_time_s:>8.3f} "
            f"{r.predicted_mem_bytes_per_gpu / GIB:>8.1f}  {_band(bands, r):<7} {_biggest_parts(r)}"
        )
    if not rows:
        lines.append("  (no layout can run: see the reasons below)")
    return "\n".join(lines)


def _reason_class(reason: str) -> str:
    """Group reasons by their condition, not their numbers."""
    if reason.startswith("predicted"):
        return "memory: the predicted peak exceeds a device's usable memory"
    return reason.split(";")[0].split(", but")[0][:110]


def infeasible_summary(rows: list[PlanRow], most: int = 8) -> str:
    if not rows:
        return "every enumerated layout can run"
    counts = collections.Counter(_reason_class(r.reason) for r in rows)
    lines = [f"{len(rows)} layouts cannot run:"]
    lines += [f"  {n:>6}  {reason}" for reason, n in counts.most_common(most)]
    if len(counts) > most:
        lines.append(f"  {sum(n for _, n in counts.most_common()[most:]):>6}  other reasons")
    return "\n".join(lines)


def _model_overrides(m) -> list[str]:
    return ["model=hf", f"model.hf_config={m.hf_config}", f"model.seq_len={m.seq_len}"]


def run_overrides(cfg: Loaded, r: PlanRow) -> list[str]:
    """The overrides that run exactly this layout with `python -m tuner run`."""
    m = cfg.run.model
    out = [
        *(_model_overrides(m) if m.source == "hf" else [f"model={m.name}"]),
        f"train.global_batch={cfg.run.train.global_batch}",
        f"parallel.dp={r.dp}",
        f"parallel.tp={r.tp}",
        f"parallel.pp={r.pp}",
        f"parallel.zero={r.zero}",
        f"parallel.sp={str(r.sp).lower()}",
        f"train.micro_batch={r.micro_batch}",
        f"train.activation_checkpointing={r.activation_checkpointing}",
        f"train.precision={r.precision}",
    ]
    if r.pp > 1:
        out += [f"parallel.pp_schedule={r.pp_schedule}"]
        out += [f"parallel.pp_virtual_stages={r.pp_virtual_stages}"]
    return out


def verify_commands(cfg: Loaded, rows: list[PlanRow], world: int) -> str:
    if not rows:
        return ""
    lines = [f"to measure the top {len(rows)} where the hardware is ({world} ranks each):"]
    for r in rows:
        lines.append("  python -m tuner run " + " ".join(map(shlex.quote, run_overrides(cfg, r))))
    return "\n".join(lines)
