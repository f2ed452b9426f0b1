"""How well does the step-time model predict layouts it was not fitted to?

Measures this machine (`tuner calibrate` at 2 and 4 ranks), sweeps the `layouts` space at
world size 2 (the calibration set) and at world size 4 (held out: other degrees, other
micro-batch counts, twice the ranks), fits the model to the first and predicts the second.
Reports, on the held-out trials: Spearman rank correlation of predicted and measured
throughput, step-time MAPE, whether the predicted best is the measured best, and the measured
throughput of the predicted best relative to the measured best; and the memory model's error
on every trial. The held-out errors by kind of layout become the error bands `tuner plan`
prints for this machine (bench/results/planner_accuracy.json).

    python bench/planner_accuracy.py --cal-trials 24 --test-trials 24 [--confirm-pairs 4]
        [model overrides, e.g. model.d_model=256 model.d_ff=1024 model.seq_len=128]

A sweep measures each layout once, so its best is partly luck (the largest of several noisy
figures). Where the predicted best is not the measured best, ``--confirm-pairs N`` launches
the two alternately N times each and reports their medians' ratio as well: the figure the
question "does the predicted best measure within 5% of the best?" is decided on.

Run it alone: anything else running on the machine distorts the timings it fits to.

``--reuse --workdir DIR`` re-fits and re-predicts from the sweeps an earlier run left in DIR
(DIR/reports/cal-ws2 and test-ws4) without launching anything: no measurement, no sweep, no
confirmation. ``--part-weight W`` sets how much each measured part of the step weighs in the
fit (0: the step times alone).

``--compare-with DIR2`` sets the model's error beside the measurements' own: the layouts both
runs' sweeps measured, the second run's step time against the first's (mean and worst
relative difference). No model predicts one run of this machine closer than another run of
the same layouts measures it; that difference is the floor under the held-out MAPE.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.planner_accuracy_md import render  # noqa: E402
from engine.config import RunConfig  # noqa: E402
from tuner.perf import local  # noqa: E402
from tuner.perf.errors import ErrorBands, layout_kind  # noqa: E402
from tuner.perf.model import PART_WEIGHT, predict  # noqa: E402
from tuner.planner.calibration import MeasuredStep, fit_measured  # noqa: E402
from tuner.planner.rank import PlanRow  # noqa: E402
from tuner.planner.show import describe  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def _tuner(*args: str, cwd: Path) -> None:
    cmd = [sys.executable, "-m", "tuner", *args]
    print("$", " ".join(cmd[1:]), flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run(cmd, cwd=cwd, env=env, check=True)


def _sweep(name: str, world: int, trials: int, seed: int, cwd: Path, model: list[str]) -> None:
    _tuner(
        "sweep",
        "+experiment=layouts",
        *model,
        f"parallel.world_size={world}",
        f"sweep.name={name}",
        f"sweep.n_trials={trials}",
        f"sweep.seed={seed}",
        "sampler=random",
        "sweep.early_stop=false",  # every layout measured to the end, slow ones included
        cwd=cwd,
    )


def _reports(work: Path | None, name: str) -> Path:
    """Where the sweep ``name`` run in ``work`` keeps its study and trials."""
    return Path(work or ".") / "reports" / name


def _trials(name: str, cwd: Path) -> list[dict]:
    """The sweep's measured trials' results, each with its searched parameters (``params``)."""
    import optuna

    from tuner.config import load
    from tuner.study import storage_for, stored_result

    os.chdir(cwd)  # the sweep's storage path is relative to where it ran
    cfg = load([f"sweep.name={name}"])
    study = optuna.load_study(study_name=name, storage=storage_for(cfg))
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    out = []
    for t in done:
        r = stored_result(t)
        if r.get("step_time_s"):
            out.append({**r, "params": dict(t.params)})
    return out


def _run_tokens_per_s(overrides: list[str], out: Path) -> float:
    cmd = [sys.executable, "-m", "tuner", "run", *overrides, f"run.out={out}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run(cmd, cwd=out.parent, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())["tokens_per_s"]


def _confirm(layouts: dict[str, list[str]], pairs: int, work: Path) -> dict[str, list[float]]:
    """tokens/s of each layout over ``pairs`` alternating launches (order flipped each round,
    so drift in the machine's speed falls on both alike)."""
    runs: dict[str, list[float]] = {k: [] for k in layouts}
    for i in range(pairs):
        order = list(layouts) if i % 2 == 0 else list(reversed(layouts))
        for name in order:
            print(f"confirm {i + 1}/{pairs}: {name}", flush=True)
            runs[name].append(_run_tokens_per_s(layouts[name], work / f"confirm-{name}-{i}.json"))
    return runs


def _layout_overrides(result: dict, model: list[str]) -> list[str]:
    """``tuner run`` overrides that reproduce a trial: the model's, the world size, dp as the
    trial resolved it, and the searched parameters' values."""
    cfg = result["config"]
    keys = ["parallel.world_size", "parallel.dp", *result["params"]]

    def value(key: str) -> object:
        node = cfg
        for part in key.split("."):
            node = node[part]
        return node

    return [*model, *(f"{k}={value(k)}" for k in keys)]


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _predicted_rows(results: list[dict], world: int, coeffs, model: list[str]) -> list[dict]:
    cluster = local.cluster(world, mem_gib=1e6)
    rows = []
    for r in results:
        cfg = RunConfig.from_dict(r["config"])
        pred = predict(cfg, cluster, coeffs)
        p = cfg.parallel
        rows.append(
            {
                "kind": layout_kind(p.dp, p.tp, p.pp),
                "layout": describe(PlanRow.of(cfg, feasible=True)),
                "measured_step_s": r["step_time_s"],
                "predicted_step_s": pred.step_time_s,
                "measured_tokens_per_s": r["tokens_per_s"],
                "predicted_tokens_per_s": pred.tokens_per_s,
                "mem_prediction_error": r.get("mem_prediction_error"),
                "overrides": _layout_overrides(r, model),
            }
        )
    return rows


def _errors(rows: list[dict]) -> list[float]:
    return [(x["predicted_step_s"] - x["measured_step_s"]) / x["measured_step_s"] for x in rows]


def _figures(rows: list[dict]) -> dict:
    """Step-time MAPE, worst error, rank correlation, the predicted best's measured throughput
    relative to the measured best, and MAPE / worst by kind of layout."""
    errors = _errors(rows)
    meas = [x["measured_tokens_per_s"] for x in rows]
    pred = [x["predicted_tokens_per_s"] for x in rows]
    best_pred, best_meas = int(np.argmax(pred)), int(np.argmax(meas))
    bands = ErrorBands.from_residuals([x["kind"] for x in rows], errors, "")
    return {
        "step_time_mape": float(np.mean(np.abs(errors))),
        "step_time_max_error": float(np.max(np.abs(errors))),
        "spearman": _spearman(pred, meas),
        "predicted_best_vs_measured_best": meas[best_pred] / meas[best_meas],
        "by_kind": bands.by_kind,
    }


def run_to_run(first: Path, second: Path) -> dict[str, dict]:
    """Per sweep, how far ``second``'s measurement of each layout is from ``first``'s (the
    layouts both measured, by their searched parameters)."""
    out = {}
    for name in ("cal-ws2", "test-ws4"):
        runs = [
            {json.dumps(r["params"], sort_keys=True): r["step_time_s"] for r in _trials(name, w)}
            for w in (first, second)
        ]
        common = sorted(set(runs[0]) & set(runs[1]))
        diff = [runs[1][k] / runs[0][k] - 1 for k in common]
        out[name] = {
            "layouts": len(common),
            "mean_abs": float(np.mean(np.abs(diff))) if diff else None,
            "max_abs": float(np.max(np.abs(diff))) if diff else None,
            "median_ratio": float(np.median(np.add(diff, 1))) if diff else None,
            # the rank agreement of two measurements: the ceiling of the model's Spearman
            "spearman": _spearman(*([r[k] for k in common] for r in runs)) if diff else None,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cal-trials", type=int, default=24)
    ap.add_argument("--test-trials", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--confirm-pairs", type=int, default=4)
    ap.add_argument("--reuse", action="store_true", help="re-fit the sweeps in --workdir")
    ap.add_argument("--part-weight", type=float, default=PART_WEIGHT)
    ap.add_argument("--results", type=Path, default=RESULTS, help="where the report goes")
    ap.add_argument("--compare-with", type=Path, help="another run's --workdir: run-to-run noise")
    args, model = ap.parse_known_args()
    if args.compare_with is not None:
        args.compare_with = args.compare_with.resolve()
    if args.reuse:
        missing = [n for n in ("cal-ws2", "test-ws4") if not _reports(args.workdir, n).is_dir()]
        if missing:
            ap.error(f"--reuse needs --workdir with reports/{missing[0]} from an earlier run")
        args.confirm_pairs = 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="planner-accuracy-"))
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()  # the sweeps' storages are found from their own directory
    started = time.time()
    if not args.reuse:
        _tuner("calibrate", "calibrate.world_sizes=[2,4]", cwd=work)
        _sweep("cal-ws2", 2, args.cal_trials, args.seed, work, model)
        _sweep("test-ws4", 4, args.test_trials, args.seed + 1, work, model)

    cal, test = _trials("cal-ws2", work), _trials("test-ws4", work)
    fitted = fit_measured(
        [MeasuredStep.of(r) for r in cal],
        source=f"{len(cal)} trials at world size 2",
        part_weight=args.part_weight,
    )
    in_sample = _figures(_predicted_rows(cal, 2, fitted.coeffs, model))
    rows = _predicted_rows(test, 4, fitted.coeffs, model)
    errors = _errors(rows)
    meas = [x["measured_tokens_per_s"] for x in rows]
    predt = [x["predicted_tokens_per_s"] for x in rows]
    best_pred, best_meas = int(np.argmax(predt)), int(np.argmax(meas))
    confirmed = None
    if best_pred != best_meas and args.confirm_pairs > 0:
        runs = _confirm(
            {"predicted": rows[best_pred]["overrides"], "measured": rows[best_meas]["overrides"]},
            args.confirm_pairs,
            work,
        )
        confirmed = {
            "runs_tokens_per_s": runs,
            "ratio_of_medians": float(np.median(runs["predicted"]) / np.median(runs["measured"])),
        }
    mem = [abs(x["mem_prediction_error"]) for x in rows if x["mem_prediction_error"] is not None]
    reuse = f"--reuse --workdir {args.workdir} " if args.reuse else ""
    if args.compare_with is not None:
        reuse += f"--compare-with {args.compare_with} "
    summary = {
        "command": f"python bench/planner_accuracy.py {reuse}"
        f"--cal-trials {args.cal_trials} --test-trials {args.test_trials} --seed {args.seed} "
        f"--confirm-pairs {args.confirm_pairs} --part-weight {args.part_weight} "
        f"{' '.join(model)}".strip(),
        "part_weight": args.part_weight,
        "calibration_trials": len(cal),
        "held_out_trials": len(rows),
        "spearman": _spearman(predt, meas),
        "step_time_mape": float(np.mean(np.abs(errors))),
        "step_time_max_error": float(np.max(np.abs(errors))),
        "top1_hit": best_pred == best_meas,
        "predicted_best_vs_measured_best": meas[best_pred] / meas[best_meas],
        # the same, both re-measured in alternating launches (1.0 where they are one layout)
        "predicted_best_vs_measured_best_confirmed": (
            1.0 if best_pred == best_meas else confirmed and confirmed["ratio_of_medians"]
        ),
        "predicted_best": rows[best_pred]["layout"],
        "measured_best": rows[best_meas]["layout"],
        "confirmation": confirmed,
        "model_overrides": model,
        "memory_mape": float(np.mean(mem)) if mem else None,
        "memory_max_error": float(np.max(mem)) if mem else None,
        "coefficients": fitted.coeffs.values,
        "in_sample": in_sample,
        "run_to_run": args.compare_with and run_to_run(args.compare_with, work),
        "held_out_by_kind": _figures(rows)["by_kind"],
        "wall_s": time.time() - started,
    }
    bands = ErrorBands.from_residuals(
        [x["kind"] for x in rows], errors, "held out at 4 ranks, fitted at 2 (this machine)"
    )
    args.results.mkdir(parents=True, exist_ok=True)
    out = {
        "summary": summary,
        "rows": rows,
        "bands": {"gloo": {"by_kind": bands.by_kind, "source": bands.source}},
    }
    (args.results / "planner_accuracy.json").write_text(json.dumps(out, indent=1))
    text = render(summary, rows, errors, args.compare_with)
    (args.results / "planner_accuracy.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
