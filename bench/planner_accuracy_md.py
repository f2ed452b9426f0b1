"""bench/planner_accuracy.py's report as markdown: the summary figures, the errors by kind of
layout in and out of sample, the run-to-run table (``--compare-with``) and every held-out
layout's error."""

from __future__ import annotations

from pathlib import Path

SUMMARY_KEYS = (
    "calibration_trials",
    "held_out_trials",
    "spearman",
    "step_time_mape",
    "step_time_max_error",
    "top1_hit",
    "predicted_best_vs_measured_best",
    "predicted_best_vs_measured_best_confirmed",
    "predicted_best",
    "measured_best",
    "memory_mape",
    "memory_max_error",
)


def _band_cell(band: dict | None) -> str:
    return f"{100 * band['mape']:.0f}% / {100 * band['max']:.0f}% ({band['n']})" if band else "-"


def render(summary: dict, rows: list[dict], errors: list[float], compare_with: Path | None) -> str:
    in_sample = summary["in_sample"]
    lines = [
        "# Planner accuracy on this machine",
        "",
        f"`{summary['command']}` ({summary['wall_s'] / 60:.0f} min)",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for k in SUMMARY_KEYS:
        v = summary[k]
        lines.append(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")
    lines += [
        "",
        "| kind | in-sample MAPE / worst (n) | held-out MAPE / worst (n) |",
        "|---|---|---|",
    ]
    held = summary["held_out_by_kind"]
    for kind in dict.fromkeys([*held, *in_sample["by_kind"]]):
        cells = [_band_cell(by.get(kind)) for by in (in_sample["by_kind"], held)]
        lines.append(f"| {kind} | {cells[0]} | {cells[1]} |")
    lines.append(
        f"\nIn sample: spearman {in_sample['spearman']:.3f}, predicted best "
        f"{in_sample['predicted_best_vs_measured_best']:.3f} of the measured best."
    )
    if summary["run_to_run"]:
        lines += [
            "",
            f"The same layouts as the run in {compare_with} measured them (this run's step"
            " time against that run's): the noise floor under the errors above.",
            "",
            "| sweep | layouts | mean abs. difference | worst | median ratio | spearman |",
            "|---|---|---|---|---|---|",
        ]
        for name, d in summary["run_to_run"].items():
            if d["layouts"]:
                lines.append(
                    f"| {name} | {d['layouts']} | {100 * d['mean_abs']:.1f}% | "
                    f"{100 * d['max_abs']:.1f}% | {d['median_ratio']:.3f} | {d['spearman']:.3f} |"
                )
    lines += ["", "| layout (held out) | measured s | predicted s | error |", "|---|---|---|---|"]
    for x, e in zip(rows, errors, strict=True):
        lines.append(
            f"| {x['layout']} | {x['measured_step_s']:.4f} | {x['predicted_step_s']:.4f} | "
            f"{100 * e:+.0f}% |"
        )
    return "\n".join(lines) + "\n"
