"""``python -m tuner sweep|run|report [hydra overrides]``.

Hydra composes ``conf/`` with the overrides for every subcommand; ``--cfg job`` prints the
composed config and ``--help`` lists the config groups. User errors print one line naming the
key, the value and what is valid, and exit with status 2 before anything is launched.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

# Only torch-free modules at the top: --help, --cfg job, config errors and `report` answer
# without importing torch; what launches is imported inside the subcommand that launches.
from engine.config import ConfigError
from engine.validate import validate
from tuner.config import CONF_DIR, Loaded, check_sampler, load
from tuner.summary import format_run

EXIT_USAGE = 2
COMMANDS = ("sweep", "run", "report", "export", "plan", "calibrate", "compare")

USAGE = """usage: python -m tuner COMMAND [KEY=VALUE ...] [--cfg job] [--help]

  sweep    search the space (space=, sampler=) with Optuna; writes reports/<sweep.name>/
  run      run one configuration and print its measurements (run.out=PATH saves the JSON)
  report   rebuild reports/<sweep.name>/report.html and trials.csv from the sweep's study
  export   consolidate the newest checkpoint in checkpoint.dir into export.out (plain torch)
  plan     rank every layout of the model on cluster= by the performance model (no launch)
  calibrate  measure this machine for cluster=local (matmuls, memory, collectives)
  compare  NAME NAME [NAME...]: several sweeps on one page (reports/compare/)

Overrides use Hydra syntax, e.g.:
  python -m tuner sweep model=tiny sweep.name=first sweep.n_trials=6
  python -m tuner run parallel.dp=2 train.micro_batch=4 train.precision=bf16
  python -m tuner sweep 'space.train.micro_batch=[2,4]' sampler=random
  python -m tuner plan model=llama-7b cluster=h100-sxm cluster.nodes=16 train.global_batch=1024
"""


def _groups() -> str:
    lines = []
    for group in sorted(p for p in CONF_DIR.iterdir() if p.is_dir()):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        lines.append(f"  {group.name}: {', '.join(options)}")
    return "config groups (choose with GROUP=OPTION):\n" + "\n".join(lines)


def _cmd_run(cfg: Loaded) -> int:
    run_cfg = validate(cfg.run)
    from engine.results import write_json_atomic
    from tuner.launch import check_machine, run_trial

    check_machine(run_cfg, cfg.launcher)
    if cfg.run_options.out:  # found unwritable now, not after the run
        from tuner.outputs import check_file

        check_file(Path(cfg.run_options.out), key="run.out")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.sweep.out_dir) / "runs" / f"{stamp}-{os.getpid()}"
    outcome = run_trial(run_cfg, trial_dir=run_dir, launcher=cfg.launcher)
    if outcome.result is not None and cfg.run_options.out:
        write_json_atomic(cfg.run_options.out, outcome.result)
    if not outcome.ok:
        print(f"run failed ({outcome.reason}): {outcome.detail}\nlogs: {run_dir}", file=sys.stderr)
        return 1
    print(format_run(outcome.result))
    print(
        f"\nlogs and result.json: {run_dir}"
        + (f"; JSON also at {cfg.run_options.out}" if cfg.run_options.out else "")
    )
    return 0


def _cmd_sweep(cfg: Loaded) -> int:
    import optuna

    from tuner.sweep import run_sweep  # optuna import is slow: only when sweeping

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_sampler(cfg)
    report = run_sweep(cfg)
    print(f"open {report.resolve()} in a browser")
    return 0


def _cmd_report(cfg: Loaded) -> int:
    import optuna

    from tuner.report import write_report
    from tuner.study import storage_for, study_exists, sweep_dir

    # checked before opening the storage, which would create its file and folder
    if not study_exists(cfg):
        raise ConfigError(
            f"no sweep named sweep.name={cfg.sweep.name} in {cfg.sweep.storage or sweep_dir(cfg)}; "
            "run `python -m tuner sweep sweep.name=...` first."
        )
    study = optuna.load_study(study_name=cfg.sweep.name, storage=storage_for(cfg))
    print(f"open {write_report(study, sweep_dir(cfg)).resolve()} in a browser")
    return 0


def _cmd_export(cfg: Loaded) -> int:
    from engine.export import export

    if not cfg.run.checkpoint.dir:
        raise ConfigError("`tuner export` needs checkpoint.dir=DIR (a folder of checkpoints).")
    out, step = export(cfg.run.checkpoint.dir, cfg.export.out)
    print(
        f"wrote {out} (step {step}) and {out}.json (model shape); load it with "
        f"GPT(ModelConfig(**json.load(open('{out}.json')))).load_state_dict("
        f"torch.load('{out}', weights_only=True))"
    )
    return 0


def _cmd_plan(cfg: Loaded) -> int:
    from tuner.planner.command import cmd_plan

    return cmd_plan(cfg)


def _cmd_calibrate(cfg: Loaded) -> int:
    from tuner.planner.command import cmd_calibrate

    return cmd_calibrate(cfg)


def _cmd_compare(cfg: Loaded, names: list[str]) -> int:
    from tuner.compare.command import cmd_compare

    return cmd_compare(cfg, names)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n" + _groups())
        return 0 if argv else EXIT_USAGE
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USAGE
    if "--help" in rest or "-h" in rest:
        print(USAGE + "\n" + _groups())
        return 0
    show_cfg = "--cfg" in rest
    if show_cfg:
        i = rest.index("--cfg")
        rest = rest[:i] + rest[i + 2 :]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("optuna").setLevel(logging.WARNING)
    try:
        names: list[str] = []
        if command == "compare":  # the sweep names come first, then the overrides
            from tuner.compare.command import split_names

            names, rest = split_names(rest)
        cfg = load(rest)
        if show_cfg:
            print(OmegaConf.to_yaml(cfg.raw))
            return 0
        commands = {
            "sweep": _cmd_sweep,
            "run": _cmd_run,
            "report": _cmd_report,
            "export": _cmd_export,
            "plan": _cmd_plan,
            "calibrate": _cmd_calibrate,
            "compare": lambda c: _cmd_compare(c, names),
        }
        return commands[command](cfg)
    except ConfigError as err:
        # one line, whatever the message was built from (a path or a library's error text)
        lines = (line.strip() for line in str(err).splitlines())
        print("error: " + " ".join(line for line in lines if line), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
