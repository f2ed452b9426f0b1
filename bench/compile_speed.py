"""Does ``train.compile`` pay on this machine? Eager against compiled, side by side, in one run.

Launches the same configuration alternately with each ``train.compile`` mode (the order
rotates every pair), several times each, and compares the tokens/s of the timed steps; the
compile time (``compile_s``, spent in the untimed warmup steps) is listed apart.

    python bench/compile_speed.py --pairs 5 --modes none,blocks [hydra overrides ...]

Writes a Markdown table to bench/results/compile_speed.md (and prints it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from measure_overhead import arm_row, publish, run_result  # bench/ is the script's own folder

# eager against compiled on the engine's tiny GPT; no profiler, so the timed steps are plain
DEFAULT = [
    *("model=tiny", "parallel.dp=2", "train.micro_batch=4", "train.global_batch=8"),
    *("train.steps=16", "train.warmup_steps=4", "measure.profile_steps=0"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    # comma-separated: a list argument would take the Hydra overrides after it as modes too
    parser.add_argument(
        "--modes", default="none,blocks", help="train.compile values, e.g. none,blocks"
    )
    args, overrides = parser.parse_known_args()
    args.modes = args.modes.split(",")
    overrides = overrides or DEFAULT
    tps: dict[str, list[float]] = {m: [] for m in args.modes}
    compile_s: dict[str, list[float]] = {m: [] for m in args.modes}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            order = args.modes[i % len(args.modes) :] + args.modes[: i % len(args.modes)]
            for mode in order:
                result = run_result([*overrides, f"train.compile={mode}"], Path(tmp) / f"{i}.json")
                tps[mode].append(result["tokens_per_s"])
                compile_s[mode].append(result["compile_s"])
                print(f"{mode}: {tps[mode][-1]:,.0f} tokens/s", flush=True)
    base = statistics.median(tps[args.modes[0]])
    load = os.getloadavg()[0]
    lines = [
        f"# torch.compile against eager ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `python bench/compile_speed.py --pairs {args.pairs} --modes "
        f"{','.join(args.modes)} {' '.join(overrides)}`",
        "",
        f"Load average (1 min) at the end: {load:.1f} on {os.cpu_count()} cores; other work "
        "shares the machine, so compare the min-max ranges, not only the medians.",
        "",
        f"| train.compile | median tokens/s | min | max | vs {args.modes[0]} | compile_s median |",
        "|---|---|---|---|---|---|",
    ]
    for mode, values in tps.items():
        lines.append(arm_row(mode, values, base) + f" {statistics.median(compile_s[mode]):.1f} |")
    publish(lines, "compile_speed.md")


if __name__ == "__main__":
    main()
