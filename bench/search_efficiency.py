"""How much trial time does each search strategy spend before it finds a layout within 3%
of the best?

Three steps, each its own command:

    python bench/search_efficiency.py record              # one real sweep: the grid (minutes)
    python bench/search_efficiency.py replay --seeds 30   # offline, over the recorded grid
    python bench/search_efficiency.py live --n-trials 16  # sampler=model vs tpe, real sweeps

`record` measures every runnable layout of the space once, at a fixed world size, in one
sweep (bench/search_record.py) and writes results/search_grid.csv (one row per layout: its
parameters, state, tokens/s, step time, memory, the trial's wall time) with
search_grid.json (the command, the space's overrides, this machine's profile) and
search_grid.md. The default space is `+experiment=layouts` at 2 ranks with activation
checkpointing off (66 runnable layouts of the tiny model; recomputation only slows a model
this small): at the quick start's pace (8 trials in about a minute on 2 quiet cores) about
10 minutes. A trial's time is mostly its fixed start-up cost, so all layouts cost about
alike. `--limit K` measures the first K in the model's order only (a check of the command).
With `--workdir DIR`, an interrupted recording resumes where it stopped when run again.

`replay` runs random, TPE and the model-guided sampler over the whole space, and a
DeepSpeed-autotuner-like grid over ZeRO stage x micro-batch, for each seed against the
table (bench/search_replay.py: no process is launched) and reports, per strategy, the trial
time until the first layout within 3% of the grid's best as a fraction of the grid's total
(median and 90th percentile; inf: not found before the strategy stopped), and the best the
DeepSpeed-like space reaches at all. Each strategy stops where a sweep would, including after
50 unproductive proposals (pruned or repeated layouts) in a row. `live` runs sampler=model
and sampler=tpe sweeps with the same budget and reports what each found and what it cost.

Run `record` and `live` alone: anything else running on the machine distorts the timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from bench import search_record  # noqa: E402
from bench.search_replay import (  # noqa: E402
    TOLERANCE,
    Grid,
    best_reachable,
    deepspeed_space,
    load_grid,
    summary,
)
from bench.search_strategies import DEEPSPEED, STRATEGIES, recorded_profile, run_all  # noqa: E402
from tuner.config import load  # noqa: E402
from tuner.sweep_checks import sweep_space  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SPACE = ["+experiment=layouts", "parallel.world_size=2", "train.activation_checkpointing=none"]
# the target: model-guided search within 3% of the best in <= 20% of the grid's trial time at
# the median and <= 35% at the 90th percentile
TARGET_MEDIAN, TARGET_P90 = 0.20, 0.35


def _write(out: Path, stem: str, data: dict, lines: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1, default=str))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def cmd_record(args: argparse.Namespace) -> None:
    work = args.workdir or Path(tempfile.mkdtemp(prefix="search-grid-"))
    work.mkdir(parents=True, exist_ok=True)
    overrides = [*SPACE, *args.overrides]
    table, meta = search_record.record(overrides, work=work, limit=args.limit)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "search_grid.csv", index=False)
    meta["bench_command"] = "python bench/search_efficiency.py record " + " ".join(
        ([f"--limit {args.limit}"] if args.limit else []) + args.overrides
    )
    ok = table[table["state"] == "COMPLETE"]
    best = ok.loc[ok["tokens_per_s"].idxmax()]
    lines = [
        "# Search grid: every runnable layout measured once",
        "",
        f"`{meta['bench_command']}` ({meta['wall_s'] / 60:.1f} min), which ran",
        f"`{meta['command']}`",
        "",
        f"- layouts: {len(table)} measured of {meta['runnable_layouts']} runnable "
        f"({len(ok)} completed)",
        f"- trial time, all layouts: {table['duration_s'].sum():.0f} s",
        f"- best: {best['layout']}, {best['tokens_per_s']:,.0f} tokens/s",
        "- table: `search_grid.csv`; space and this machine's profile: `search_grid.json`",
    ]
    _write(args.out, "search_grid", meta, lines)


def read_grid(csv: Path) -> tuple[Grid, dict]:
    meta = json.loads(csv.with_suffix(".json").read_text())
    cfg = load(meta["overrides"])
    grid = load_grid(pd.read_csv(csv), cfg, sweep_space(cfg).distributions)
    return grid, meta


def _fraction(x: float) -> str:
    return "not found" if x == float("inf") else f"{100 * x:.1f}%"


def cmd_replay(args: argparse.Namespace) -> None:
    grid, meta = read_grid(args.grid)
    with recorded_profile(meta["profile"]):
        runs = run_all(grid, args.seeds, tuple(args.strategies))
    stats = {s: summary(grid, r) for s, r in runs.items()}
    ds_best = best_reachable(grid, deepspeed_space(grid))
    command = f"python bench/search_efficiency.py replay --seeds {args.seeds} --grid {args.grid}"
    lines = [
        f"# Search efficiency: trial time until a layout within {100 * TOLERANCE:.0f}% of the best",
        "",
        f"`{command}`, over `{args.grid.name}`: {len(grid.rows)} layouts measured of "
        f"{meta['runnable_layouts']} runnable (`{meta['command']}`), "
        f"{grid.total_s:.0f} s of trial time in all, best {grid.best:,.0f} tokens/s.",
        "",
        "Fraction: recorded trial time spent until the first layout within "
        f"{100 * TOLERANCE:.0f}% of the grid's best, over the whole grid's trial time "
        "(pruned layouts cost nothing, as in a sweep).",
        "",
        "| strategy | seeds that found it | median | p90 | min - max | layouts launched (median) "
        "| best found / grid best (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, st in stats.items():
        lines.append(
            f"| {s} | {st['found']}/{st['seeds']} | {_fraction(st['median_fraction'])} | "
            f"{_fraction(st['p90_fraction'])} | {_fraction(st['min_fraction'])} - "
            f"{_fraction(st['max_fraction'])} | {st['median_launched']:.0f} | "
            f"{st['best_vs_grid_best']:.3f} |"
        )
    lines += [
        "",
        f"{DEEPSPEED} (ZeRO stage x micro-batch, other knobs at defaults): best reachable "
        f"{ds_best:,.0f} tokens/s = {100 * ds_best / grid.best:.1f}% of the grid's best.",
    ]
    verdict = _verdict(stats)
    if verdict:
        lines += ["", verdict]
    for s, st in stats.items():
        if st["stopped"]:
            lines.append(f"- {s} stopped without finding it: {'; '.join(st['stopped'])}")
    data = {
        "command": command,
        "grid": meta,
        "strategies": stats,
        "deepspeed_best": ds_best,
        "grid_best": grid.best,
        "grid_total_s": grid.total_s,
    }
    _write(args.out, "search_efficiency", data, lines)


def _verdict(stats: dict) -> str:
    if not {"model", "tpe", "random"} <= set(stats):
        return ""
    m = stats["model"]
    ahead = all(
        m[q] <= stats[o][q] for o in ("tpe", "random") for q in ("median_fraction", "p90_fraction")
    )
    met = m["median_fraction"] <= TARGET_MEDIAN and m["p90_fraction"] <= TARGET_P90 and ahead
    return (
        f"Target (model: median <= {100 * TARGET_MEDIAN:.0f}%, p90 <= {100 * TARGET_P90:.0f}%, "
        f"ahead of tpe and random): {'met' if met else 'not met'}."
    )


def cmd_live(args: argparse.Namespace) -> None:
    work = args.workdir or Path(tempfile.mkdtemp(prefix="search-live-"))
    work.mkdir(parents=True, exist_ok=True)
    overrides = [*SPACE, *args.overrides]
    rows = search_record.live(overrides, work=work, n_trials=args.n_trials, seed=args.seed)
    command = "python bench/search_efficiency.py live " + " ".join(
        [f"--n-trials {args.n_trials}", f"--seed {args.seed}", *args.overrides]
    )
    lines = [
        "# Live: sampler=model against sampler=tpe, same budget",
        "",
        f"`{command}` (space: `{' '.join(overrides)}`, back to back in this order)",
        "",
        "| sampler | layouts launched | of them ended by early stopping | best tokens/s "
        "| best layout | trial time s | wall s | search stopped by the model |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        best = "-" if r["best_tokens_per_s"] is None else f"{r['best_tokens_per_s']:,.0f}"
        lines.append(
            f"| {r['sampler']} | {r['launched']} | {r.get('ended_early', 0)} | {best} | "
            f"{r['best_layout'] or '-'} | "
            f"{r['trial_time_s']:.0f} | {r['wall_s']:.0f} | {r['stopped_early'] or 'no'} |"
        )
    _write(args.out, "search_efficiency_live", {"command": command, "rows": rows}, lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    rec = sub.add_parser("record", help="measure every runnable layout once (real sweep)")
    rec.add_argument("--limit", type=int, default=0, help="measure only the first K layouts")
    rep = sub.add_parser("replay", help="replay the strategies over the recorded grid")
    rep.add_argument("--grid", type=Path, default=RESULTS / "search_grid.csv")
    rep.add_argument("--seeds", type=int, default=30)
    rep.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    liv = sub.add_parser("live", help="sampler=model vs sampler=tpe, real sweeps")
    liv.add_argument("--n-trials", type=int, default=16)
    liv.add_argument("--seed", type=int, default=0)
    for p in (rec, rep, liv):
        p.add_argument("--out", type=Path, default=RESULTS)
    for p in (rec, liv):
        p.add_argument("--workdir", type=Path, default=None, help="where the sweeps run")
        p.add_argument("overrides", nargs="*", help="more Hydra overrides for the sweeps")
    args = ap.parse_args()
    {"record": cmd_record, "replay": cmd_replay, "live": cmd_live}[args.step](args)


if __name__ == "__main__":
    main()
