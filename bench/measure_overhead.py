"""Does measuring change what is measured? Side by side, in one run.

Launches the same configuration alternately with the default measurement (profiled window,
memory high-water mark resets, per-step timers) and with the profiler off
(`measure.profile_steps=0`), several times each, and compares the tokens/s of the timed steps.
The timed steps never run under the profiler, so the difference should be noise.

    python bench/measure_overhead.py --pairs 5 [hydra overrides ...]

Writes a Markdown table to bench/results/measure_overhead.md (and prints it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = [
    "model=tiny",
    "parallel.dp=2",
    "train.micro_batch=4",
    "train.global_batch=8",
    "train.steps=14",
    "train.warmup_steps=2",
]


def run_result(overrides: list[str], out: Path) -> dict:
    """The result JSON of one `tuner run` with ``overrides``, written to ``out``."""
    cmd = [sys.executable, "-m", "tuner", "run", *overrides, f"run.out={out}"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def run(overrides: list[str], out: Path) -> float:
    return run_result(overrides, out)["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    args, overrides = parser.parse_known_args()
    overrides = overrides or DEFAULT
    arms = {
        "measured (profile_steps=2)": ["measure.profile_steps=2"],
        "unmeasured (profile_steps=0)": ["measure.profile_steps=0"],
    }
    results: dict[str, list[float]] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            order = list(arms) if i % 2 == 0 else list(reversed(arms))  # alternate the order
            for name in order:
                results[name].append(run([*overrides, *arms[name]], Path(tmp) / f"{i}.json"))
    base = statistics.median(results["unmeasured (profile_steps=0)"])
    lines = [
        f"# Measurement overhead ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `python bench/measure_overhead.py --pairs {args.pairs} {' '.join(overrides)}`",
        "",
        "| arm | median tokens/s | min | max | vs unmeasured |",
        "|---|---|---|---|---|",
    ]
    lines += [arm_row(name, values, base) for name, values in results.items()]
    publish(lines, "measure_overhead.md")


def arm_row(name: str, values: list[float], base: float) -> str:
    """| arm | median | min | max | median against ``base`` | of tokens/s ``values``."""
    med = statistics.median(values)
    return (
        f"| {name} | {med:,.0f} | {min(values):,.0f} | {max(values):,.0f} | "
        f"{100 * (med / base - 1):+.1f}% |"
    )


def publish(lines: list[str], name: str) -> None:
    """Write the table to bench/results/``name`` and print it."""
    text = "\n".join(lines) + "\n"
    (ROOT / "bench" / "results" / name).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
