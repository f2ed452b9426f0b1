"""How long does the command line take to answer when it launches nothing?

Runs each command below N times in a fresh interpreter, in a scratch folder, and reports the
median wall time and its min-max spread; then, for each command, the slowest imports by
``python -X importtime`` (cumulative microseconds, children included), which says where the
time goes. The targets: well under 1.5 s for ``--help`` and for a one-line config error; under
10 s for a whole plan (every layout of a 7B model on 128 devices, of a 70B-class one on 512).

    python bench/cli_latency.py --repeats 7 [--source OTHER_CHECKOUT] [--out FILE]

Writes a Markdown table to bench/results/cli_latency.md (and prints it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT  # the checkout whose tuner is timed (--source: e.g. an older one, to compare)
COMMANDS = {
    "--help": ["--help"],
    "config error (train.lr=nan)": ["run", "train.lr=nan"],
    "bad interpolation": ["run", "model.init_std=${oc.env:HOME}"],
    "--cfg job": ["run", "--cfg", "job"],
    "report, no such sweep": ["report", "sweep.name=never_ran"],
    "plan, unknown cluster": ["plan", "cluster=nope"],
    # the planner's targets: every layout of a 7B model on 16 x 8 H100 and of a 70B-class
    # model on 512 devices, ranked, in well under 10 s
    "plan llama-7b on 128 H100": [
        "plan",
        "model=llama-7b",
        "cluster=h100-sxm",
        "cluster.nodes=16",
        "train.global_batch=1024",
    ],
    "plan llama-70b on 512 H100": [
        "plan",
        "model=llama-70b",
        "cluster=h100-sxm",
        "cluster.nodes=64",
        "train.global_batch=1024",
    ],
}


def _run(args: list[str], cwd: str, *, importtime: bool = False) -> subprocess.CompletedProcess:
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [sys.executable, *flags, "-m", "tuner", *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(SOURCE)),
        capture_output=True,
        text=True,
        timeout=300,
    )


def time_command(args: list[str], repeats: int) -> tuple[list[float], int, bool]:
    """Wall times of ``repeats`` runs, the exit status, and whether torch was imported."""
    times = []
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(repeats):
            start = time.perf_counter()
            proc = _run(args, cwd)
            times.append(time.perf_counter() - start)
        traced = _run(args, cwd, importtime=True)
    torch = any(line.split("|")[-1].strip() == "torch" for line in traced.stderr.splitlines())
    return times, proc.returncode, torch


def top_imports(args: list[str], n: int) -> list[tuple[int, str]]:
    """The ``n`` top-level imports with the largest cumulative time (microseconds)."""
    with tempfile.TemporaryDirectory() as cwd:
        traced = _run(args, cwd, importtime=True)
    rows = []
    for line in traced.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (part.strip() for part in line[len("import time:") :].split("|"))
        if "." not in name and name not in ("tuner", "engine"):  # packages the project uses
            rows.append((int(cumulative), name))
    return sorted(rows, reverse=True)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--top", type=int, default=6, help="slowest imports listed per command")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cli_latency.md"))
    parser.add_argument("--source", default=str(ROOT), help="checkout to time (default: this)")
    args = parser.parse_args()
    global SOURCE
    SOURCE = Path(args.source).resolve()
    lines = [
        "# CLI latency (commands that launch nothing)",
        "",
        f"`python bench/cli_latency.py --repeats {args.repeats}`"
        + (f" `--source {args.source}`" if SOURCE != ROOT else "")
        + " "
        f"({time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start)",
        "",
        "| command | exit | median (s) | min–max (s) | imports torch |",
        "|---|---|---|---|---|",
    ]
    imports = []
    for label, cmd in COMMANDS.items():
        times, code, torch = time_command(cmd, args.repeats)
        lines.append(
            f"| `python -m tuner {' '.join(cmd)}` ({label}) | {code} | "
            f"{statistics.median(times):.2f} | {min(times):.2f}–{max(times):.2f} | "
            f"{'yes' if torch else 'no'} |"
        )
        top = ", ".join(f"{name} {us / 1e6:.2f}" for us, name in top_imports(cmd, args.top))
        imports.append(f"- `{' '.join(cmd)}`: {top}")
    lines += ["", "Slowest top-level imports (cumulative seconds, `python -X importtime`):", ""]
    lines += imports
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
