"""Does early stopping shorten a sweep? The same sweep with and without it, side by side.

Each round runs two sweeps of the same grid (every layout, in the same seeded order of the
brute-force sampler): one with ``sweep.early_stop=true``, one with ``false``, the order
alternating from round to round so that a drifting machine load favours neither. Reported per
arm: the sweeps' total wall times, the trials stopped early, and the best tokens/s each found
(early stopping must not lose the best layout). Run it on a quiet machine.

    python bench/early_stop.py --rounds 2 [hydra overrides ...]

Writes a Markdown table to bench/results/early_stop.md (and prints it). The default grid of
8 tiny layouts, two rounds, is sized for at most about 8 minutes on a quiet 2-core CPU
(estimated from the tiny model's step times; `--rounds 1` halves it).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from measure_overhead import ROOT, publish  # bench/ is the script's own folder

DEFAULT = [
    "model=tiny",
    "train.global_batch=8",
    # 2 warmup + 56 timed + 2 profiled: the steps, not the start-up, make most of a trial's
    # time, as in a real sweep, and a trial stopped after 4 of them saves most of its steps
    "train.steps=60",
    "space.parallel.dp=[1,2]",
    "space.train.micro_batch=[1,8]",
    "space.train.precision=[fp32,bf16]",
    "sampler=bruteforce",
    "sweep.n_trials=8",
]
ARMS = {"early stopping": "sweep.early_stop=true", "without": "sweep.early_stop=false"}


def sweep(overrides: list[str], *, name: str, out_dir: Path) -> tuple[float, int, float]:
    """One sweep: (wall seconds, trials stopped early, best tokens/s)."""
    cmd = [sys.executable, "-m", "tuner", "sweep", *overrides, f"sweep.name={name}"]
    cmd.append(f"sweep.out_dir={out_dir}")
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    wall = time.monotonic() - t0
    storage = f"sqlite:///{out_dir / name / 'study.db'}"
    study = optuna.load_study(study_name=name, storage=storage)
    stopped = sum(t.user_attrs.get("fail_reason") == "early_stop" for t in study.trials)
    return wall, stopped, study.best_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args, overrides = parser.parse_known_args()
    overrides = overrides or DEFAULT
    runs: dict[str, list[tuple[float, int, float]]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            order = list(ARMS) if i % 2 == 0 else list(reversed(ARMS))  # alternate the order
            for arm in order:
                name = f"{'on' if arm == 'early stopping' else 'off'}{i}"
                runs[arm].append(sweep([*overrides, ARMS[arm]], name=name, out_dir=Path(tmp)))
    base = statistics.median(wall for wall, _, _ in runs["without"])
    lines = [
        f"# Early stopping: sweep wall time ({time.strftime('%Y-%m-%d')})",
        "",
        f"Command: `python bench/early_stop.py --rounds {args.rounds} {' '.join(overrides)}`",
        "",
        "| arm | sweep wall s, each round | median | vs without | stopped early | best tok/s |",
        "|---|---|---|---|---|---|",
    ]
    for arm, values in runs.items():
        walls = [w for w, _, _ in values]
        med = statistics.median(walls)
        lines.append(
            f"| {arm} | {', '.join(f'{w:.1f}' for w in walls)} | {med:.1f} | "
            f"{100 * (med / base - 1):+.1f}% | {', '.join(str(s) for _, s, _ in values)} | "
            f"{', '.join(f'{b:,.0f}' for _, _, b in values)} |"
        )
    publish(lines, "early_stop.md")


if __name__ == "__main__":
    main()
