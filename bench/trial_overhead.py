"""What does one trial cost besides its timed steps? ``overhead_s`` of real trials, and its parts.

Runs N trials of one configuration (default: the tiny model on 2 ranks, the sweep's defaults)
through the sweep's own trial path (``tuner.launch.run_trial``: a fresh process group per trial)
and reports ``overhead_s`` as the sweep records it (``tuner.sweep.overhead_s``: wall time less
the timed steps), split into the warmup steps, the profiled steps and the rest (interpreter and
torch start-up, rendezvous, model build, reading the profile, writing the result, exit).

    python bench/trial_overhead.py --trials 6 [--vs-exec] [--compare SRC] [hydra overrides ...]

Each arm is one long-lived process that runs its trials one after another, as a sweep does; its
first trial, which also pays what a sweep pays once (the rank zygote's imports, engine/zygote.py),
is reported on its own line and left out of the medians. ``--vs-exec``: also an arm with
``launcher.fork_ranks=false`` (a new interpreter per rank). ``--compare SRC``: also an arm with
the engine and tuner of another checkout (e.g. one made with ``git worktree add /tmp/before
<commit>``). Arms alternate trial by trial, so all see the same machine. Writes a Markdown table
to bench/results/trial_overhead.md (and prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["model=tiny", "parallel.dp=2", "device=cpu"]
PARTS = ("overhead_s", "warmup_s", "profiled_s", "other_s", "timed_s", "wall_s", "ranks_cpu_s")


def one_trial(overrides: list[str], trial_dir: Path) -> dict[str, float]:
    """One trial as the sweep runs it; its wall time split into parts (seconds)."""
    from tuner.config import load
    from tuner.launch import run_trial
    from tuner.trial_record import overhead_s

    cfg = load(overrides)
    cpu_before = _children_cpu_s()
    outcome = run_trial(cfg.run, trial_dir=trial_dir, launcher=cfg.launcher)
    if not outcome.ok:
        raise SystemExit(f"trial failed ({outcome.reason}): {outcome.detail}")
    r = outcome.result
    times, timed = r["step_times_s"], r["timed_steps"]
    warm = cfg.run.train.warmup_steps
    after = range(timed[-1] + 1, len(times))  # the profiled window follows the timed steps
    parts = {
        "wall_s": outcome.wall_s,
        "timed_s": sum(times[i] for i in timed),
        "overhead_s": overhead_s(r, outcome.wall_s),
        "warmup_s": sum(times[:warm]),
        "profiled_s": sum(times[i] for i in after),
    }
    parts["other_s"] = parts["overhead_s"] - parts["warmup_s"] - parts["profiled_s"]
    parts["ranks_cpu_s"] = _children_cpu_s() - cpu_before
    return parts | {"n_timed": len(timed)}


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of the trial's ended ranks: this process's children, or
    its rank zygote's (forked ranks). Less sensitive to a busy machine than wall time, which
    waits for a free core."""
    from engine import warm_start

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    zygote = warm_start.existing()
    return usage.ru_utime + usage.ru_stime + (zygote.ranks_cpu_s() if zygote else 0.0)


class _Arm:
    """A process that runs one trial per line it reads (a trial folder), printing its parts."""

    def __init__(self, src: Path, overrides: list[str]) -> None:
        env = {**os.environ, "PYTHONPATH": str(src)}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", *overrides]
        self.proc = subprocess.Popen(
            cmd, cwd=src, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def trial(self, trial_dir: Path) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{trial_dir}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the arm's process ended ({self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def _serve(overrides: list[str]) -> None:
    for line in sys.stdin:
        print(json.dumps(one_trial(overrides, Path(line.strip()))), flush=True)


def _row(name: str, runs: list[dict[str, float]]) -> str:
    cells = []
    for key in PARTS:
        xs = [r[key] for r in runs]
        cells.append(f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})")
    return f"| {name} | {len(runs)} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--vs-exec", action="store_true", help="also launcher.fork_ranks=false")
    parser.add_argument("--compare", type=Path, help="another checkout, run alternately")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    overrides = DEFAULT + overrides
    if args.serve:
        _serve(overrides)
        return
    arms = {"this checkout": (ROOT, overrides)}
    if args.vs_exec:
        arms["launcher.fork_ranks=false"] = (ROOT, [*overrides, "launcher.fork_ranks=false"])
    if args.compare:
        arms[str(args.compare)] = (args.compare.resolve(), overrides)
    procs = {name: _Arm(src, o) for name, (src, o) in arms.items()}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for i in range(args.trials + 1):  # trial 0: each arm's first, reported apart
                for a, (name, proc) in enumerate(procs.items()):
                    runs[name].append(proc.trial(Path(tmp) / f"trial{i}-arm{a}"))
                    print(f"{name} trial {i}: {runs[name][-1]}", file=sys.stderr)
        finally:
            for proc in procs.values():
                proc.close()
    load = os.getloadavg()[0]
    lines = [
        "# Per-trial fixed cost (`overhead_s`)",
        "",
        f"`python bench/trial_overhead.py --trials {args.trials}"
        + (" --vs-exec" if args.vs_exec else "")
        + (f" --compare {args.compare}" if args.compare else "")
        + (" " + " ".join(overrides[len(DEFAULT) :]) if len(overrides) > len(DEFAULT) else "")
        + f"`, overrides {' '.join(overrides)}; load average at the end {load:.1f} "
        f"on {os.cpu_count()} cores. Seconds, median (min–max) over trials.",
        "",
        "| arm | trials | " + " | ".join(PARTS) + " |",
        "|---|---|" + "---|" * len(PARTS),
        *(_row(name, rs[1:]) for name, rs in runs.items()),
        *(_row(f"{name}, first trial", rs[:1]) for name, rs in runs.items()),
        "",
        "`overhead_s` = wall − timed steps; `other_s` = overhead − warmup − profiled steps "
        "(start-up, rendezvous, model build, reading the profile, result, exit); "
        "`ranks_cpu_s`: CPU seconds of all ranks together, the whole trial. "
        "A sweep's first trial also starts the rank zygote (its imports, once per sweep). "
        f"Timed steps per trial: {sorted({r['n_timed'] for rs in runs.values() for r in rs})}.",
    ]
    text = "\n".join(lines) + "\n"
    out = ROOT / "bench" / "results" / "trial_overhead.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
