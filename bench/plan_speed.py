"""How long does the planner take on its largest promised case: every layout of a 70B model on
4,096 GPUs (512 nodes of 8 H100), enumerated, judged, ranked, written as JSON and drawn?

Runs the command N times for each checkout, interleaved (A B A B ...) so that the machine's
load falls alike on every checkout, each in a fresh interpreter in a scratch folder, and
reports the median wall time and user CPU time. User time is the figure to compare on a
shared machine: the wall time also counts what other processes take from this one.

    python bench/plan_speed.py --repeats 3 [--checkout LABEL=PATH ...] [--out FILE]

Without --checkout it times this checkout. Writes a Markdown table to
bench/results/plan_speed.md (and prints it).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# writing the JSON of every layout is part of the work
PLAN = ["plan", "model=llama-70b", "cluster=h100-sxm", "cluster.nodes=512"]
PLAN += ["train.global_batch=2048", "plan.out=all.json"]


def run_once(source: Path, cwd: str) -> tuple[float, float]:
    """(wall, user CPU) seconds of one plan by the checkout at ``source``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tuner", *PLAN],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(source)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{source}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--checkout",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="a checkout to time (repeatable; default: this one)",
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "plan_speed.md"))
    args = parser.parse_args()
    checkouts = dict(c.split("=", 1) for c in args.checkout) or {"this checkout": str(ROOT)}
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in checkouts}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(args.repeats):
            for label, path in checkouts.items():
                times[label].append(run_once(Path(path).resolve(), cwd))
    lines = [
        "# Planner speed",
        "",
        f"`python -m tuner {' '.join(PLAN)}` (61,968 layouts), "
        f"{args.repeats} runs per checkout, interleaved: "
        f"`python bench/plan_speed.py --repeats {args.repeats}"
        + "".join(f" --checkout {label}=PATH" for label in args.checkout and checkouts)
        + f"` ({time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the start)",
        "",
        "| checkout | wall, median (s) | wall, min–max (s) | user CPU, median (s) |",
        "|---|---|---|---|",
    ]
    for label, runs in times.items():
        walls, users = [w for w, _ in runs], [u for _, u in runs]
        lines.append(
            f"| {label} | {statistics.median(walls):.2f} | {min(walls):.2f}–{max(walls):.2f} | "
            f"{statistics.median(users):.2f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
