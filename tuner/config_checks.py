"""Checks of the tuner's own sections (sweep, launcher, run, export, sampler), value by value.

The run sections are checked by the engine (engine.validate); these rules cover the rest, so
that a bad value stops a command before anything runs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from engine.config import AC_MODES, PP_SCHEDULES, PRECISIONS, ZERO_STAGES, ConfigError
from engine.validate_values import SEED_MAX, Rule, check, check_all, shown
from tuner.hydra_errors import explain, one_line
from tuner.launcher_checks import LAUNCHER_RULES, check_launcher
from tuner.schema import OBJECTIVES

if TYPE_CHECKING:
    from tuner.config import Loaded

_NAME = Rule(
    "str",
    pattern=r"(?!\.)[\w.+-]{1,100}",
    what="a plain folder name: 1 to 100 letters, digits or '._+-', not starting with '.'",
)
_PATH = Rule("str", pattern=r".+", what="a non-empty path without control characters")
_IDS = Rule(
    "str",
    pattern=r"(\d+(-\d+)?(,\d+(-\d+)?)*)?",
    what='numbers and ranges like "0-3" or "0,2,4-5" ("" = all)',
)
# Every field of the tuner's own sections (a test checks none is missing).
TUNER_RULES: dict[str, Rule] = {
    "sweep.name": _NAME,
    "sweep.n_trials": Rule("int", 1),
    "sweep.storage": Rule("str"),
    "sweep.out_dir": _PATH,
    "sweep.seed": Rule("int", 0, SEED_MAX),
    "sweep.allow_other_machine": Rule("bool"),
    "sweep.seed_from_plan": Rule("int", 0, 10**6),
    "sweep.confirm_top": Rule("int", 0, 100),
    "sweep.confirm_rounds": Rule("int", 1, 100),
    "sweep.heartbeat_s": Rule("int", 0, 86400),
    "sweep.early_stop": Rule("bool"),
    "sweep.early_stop_min_steps": Rule("int", 1, 10**6),
    "launcher.timeout_s": Rule("float", 0, 10**7, low_open=True),
    "launcher.max_ranks": Rule("int", 1, 2**20),
    "launcher.mem_limit_gib": Rule("float", 0, 2**30),
    "launcher.mem_reserve_gib": Rule("float", 0, 2**30),
    "launcher.cpus": _IDS,
    "launcher.share_cpus": Rule("bool"),
    "launcher.devices": _IDS,
    "launcher.lock_dir": Rule("str"),
    "launcher.fork_ranks": Rule("bool"),
    "run.out": Rule("str"),
    "export.out": _PATH,
    "plan.world_size": Rule("int", 0, 2**24),
    "plan.top_k": Rule("int", 1, 10**6),
    "plan.out": Rule("str"),
    "plan.html": Rule("str"),
    "plan.calibrate_from": Rule("list", item=_NAME, min_items=0),
    "plan.zero": Rule("list", item=Rule("choice", choices=ZERO_STAGES)),
    "plan.sp": Rule("list", item=Rule("bool")),
    "plan.pp_schedule": Rule("list", item=Rule("choice", choices=tuple(PP_SCHEDULES))),
    "plan.pp_virtual_stages": Rule("list", item=Rule("int", 2, 64)),
    "plan.micro_batch": Rule("list", item=Rule("int", 1, 2**20)),
    "plan.activation_checkpointing": Rule("list", item=Rule("choice", choices=AC_MODES)),
    "plan.precision": Rule("list", item=Rule("choice", choices=PRECISIONS)),
    "calibrate.world_sizes": Rule("list", item=Rule("int", 2, 256)),
    "compare.force": Rule("bool"),
    "compare.out": Rule("str"),
    **LAUNCHER_RULES,
}
# keyword arguments of Optuna's samplers that take counts or seeds; the sampler classes
# check little themselves (a seed of -1 fails only at the first trial)
SAMPLER_RULES: dict[str, Rule] = {
    "seed": Rule("int", 0, SEED_MAX),
    "n_startup_trials": Rule("int", 0, 10**6),
    "min_fit_trials": Rule("int", 1, 10**6),
    "prior_weight": Rule("float", 0, 10**6),
    "n_ei_candidates": Rule("int", 1, 10**6),
    "population_size": Rule("int", 2, 10**6),
    "mutation_prob": Rule("float", 0, 1),
    "crossover_prob": Rule("float", 0, 1),
    "swapping_prob": Rule("float", 0, 1),
}


def check_tuner_sections(cfg: Loaded) -> None:
    s = cfg.sweep
    values = {
        f"{section}.{f.name}": getattr(obj, f.name)
        for section, obj in (
            ("sweep", s),
            ("launcher", cfg.launcher),
            ("run", cfg.run_options),
            ("export", cfg.export),
        )
        for f in dataclasses.fields(obj)
    }
    # read by their commands from the composed config
    for section in ("plan", "calibrate", "compare"):
        try:
            node = OmegaConf.to_container(cfg.raw[section], resolve=True)
        except OmegaConfBaseException as err:
            raise ConfigError(explain(err)) from None
        values.update({f"{section}.{k}": v for k, v in node.items()})
    check_all({k: v for k, v in values.items() if k in TUNER_RULES}, TUNER_RULES)
    check_launcher(cfg.launcher, out_dir=s.out_dir)
    bad = [o for o in s.objectives if o not in OBJECTIVES]
    if bad or not s.objectives or len(set(s.objectives)) != len(s.objectives):
        raise ConfigError(
            f"`sweep.objectives` must be distinct names from {list(OBJECTIVES)}, but got "
            f"sweep.objectives={shown(s.objectives)}."
        )
    if "_target_" not in cfg.sampler:
        raise ConfigError(
            "`sampler` needs a `_target_`; choose one with sampler=tpe|random|bruteforce|nsga2."
        )
    for key, rule in SAMPLER_RULES.items():
        if cfg.sampler.get(key) is not None:
            check(f"sampler.{key}", cfg.sampler[key], rule)


def check_sampler(cfg: Loaded) -> None:
    """Create the sampler once, so that a bad argument stops the sweep before any launch.

    Imports Optuna, so it runs for `sweep` only, not on every command.
    """
    import optuna
    from hydra.utils import instantiate

    try:
        sampler = instantiate(cfg.sampler)
    except Exception as err:  # any error of the user's sampler spec, reported in one line
        raise ConfigError(
            f"`sampler` could not be created from {shown(cfg.sampler)}: {one_line(err)}"
        ) from None
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise ConfigError(
            f"`sampler._target_` must name an Optuna sampler, but got "
            f"sampler._target_={shown(cfg.sampler['_target_'])}."
        )
