"""The tuner's typed config: Hydra composes YAML and overrides against this schema, once.

The engine's own dataclasses are the schema of the run sections, so a key the engine does not
know is refused by Hydra before anything runs; the tuner adds the sweep, launcher and run
sections. ``load()`` returns frozen-in-spirit plain objects; nothing downstream sees a DictConfig.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from engine.config import (
    CheckpointConfig,
    ConfigError,
    DebugConfig,
    MeasureConfig,
    ModelConfig,
    ParallelConfig,
    RunConfig,
    TrainConfig,
)
from engine.validate import validate_values
from engine.validate_values import SEED_MAX, Rule, check, check_all, shown

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# run sections: the part of the composed config that becomes the engine's RunConfig
RUN_SECTIONS = (
    "model",
    "parallel",
    "train",
    "measure",
    "checkpoint",
    "debug",
    "device",
    "peak_flops",
)
OBJECTIVES = {  # metric -> direction
    "tokens_per_s": "maximize",
    "mfu": "maximize",
    "step_time_s": "minimize",
    "peak_mem_bytes": "minimize",
    "comm_bytes": "minimize",
    "comm_time_s": "minimize",
}
# objectives read from the profiled steps: without them they are not measured (null), and a
# sweep optimising them would optimise nothing
PROFILED_OBJECTIVES = ("comm_bytes", "comm_time_s")


@dataclass
class SweepConfig:
    name: str = "default"  # folder under out_dir and Optuna study name; same name = resume
    n_trials: int = 10  # distinct configurations to measure (repeats of one are not re-run)
    objectives: list[str] = field(default_factory=lambda: ["tokens_per_s"])
    storage: str = ""  # Optuna storage URL; "" = sqlite file in the sweep's folder
    out_dir: str = "reports"
    seed: int = 0  # sampler seed
    # resume (or share) the study on a machine other than the one it was measured on
    allow_other_machine: bool = False


@dataclass
class LauncherConfig:
    timeout_s: float = 300.0  # wall-clock limit of one trial, start-up included
    max_ranks: int = 8  # most ranks started on this machine (CUDA: also at most one per GPU)


@dataclass
class RunOptions:
    out: str = ""  # `tuner run`: also write the run's metrics JSON here


@dataclass
class ExportOptions:
    out: str = "model.pt"  # `tuner export`: the consolidated weights file


@dataclass
class TunerConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    device: str = "auto"
    peak_flops: float = 0.0
    sweep: SweepConfig = field(default_factory=SweepConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    run: RunOptions = field(default_factory=RunOptions)
    export: ExportOptions = field(default_factory=ExportOptions)
    space: dict[str, Any] = field(default_factory=dict)  # checked by tuner.space
    sampler: dict[str, Any] = field(default_factory=dict)  # a `_target_` sampler spec


ConfigStore.instance().store(name="schema", node=TunerConfig)


@dataclass
class Loaded:
    """A composed config, split into what each part of the tuner needs."""

    run: RunConfig  # the base run (the sweep's searched keys replace some of its values)
    sweep: SweepConfig
    launcher: LauncherConfig
    run_options: RunOptions
    export: ExportOptions
    space: dict[str, Any]
    sampler: dict[str, Any]
    overrides: list[str]  # as typed by the user
    raw: DictConfig


def compose_config(overrides: list[str]) -> DictConfig:
    """Hydra composition; Hydra's and OmegaConf's errors become one-line ConfigErrors."""
    _check_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_explain(err)) from None


def _check_overrides(overrides: list[str]) -> None:
    """Each override parses, and a true/false key gets true or false.

    OmegaConf turns any integer and words like "yes" into a bool (``parallel.sp=
    9223372036854775808`` would mean true), so these are refused here, from the typed text.
    """
    parser = OverridesParser.create()
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as err:
            raise ConfigError(
                f"cannot parse the override {shown(text)}: {_one_line(err)}; write KEY=VALUE, "
                "and quote a value with spaces or special characters (e.g. 'KEY=\"a b\"')."
            ) from None
        if override.is_delete() or not isinstance(_default(override.key_or_group), bool):
            continue
        value = override.value()
        if not isinstance(value, bool) and not _is_interpolation(value):
            check(override.key_or_group, value, Rule("bool"))


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("${")


def _one_line(err: BaseException) -> str:
    lines = (ln.strip() for ln in str(err).splitlines())
    return " ".join(ln for ln in lines if ln and not ln.startswith("See https://"))


def _default(path: str) -> Any:
    """The schema's default at dotted ``path`` (None where there is no such field)."""
    node: Any = TunerConfig()
    for part in path.split("."):
        if not dataclasses.is_dataclass(node):
            return None
        node = getattr(node, part, None)
    return node


def _valid_keys(path: str) -> list[str]:
    """Keys of the schema section at dotted ``path`` ("" = top level)."""
    node: Any = TunerConfig()
    for part in [p for p in path.split(".") if p]:
        node = getattr(node, part, None)
    if not dataclasses.is_dataclass(node):
        return []
    return [f.name for f in dataclasses.fields(node)]


_TYPE_HINTS = {
    "Integer": "an integer",
    "Float": "a number",
    "not a valid bool": "true or false",
    "to string": "a single value, not a list",
}


def _explain(err: Exception) -> str:
    """One actionable line from Hydra's and OmegaConf's (often multi-line, nested) errors."""
    inner: Any = err
    while inner.__cause__ is not None:
        inner = inner.__cause__
    key = getattr(inner, "full_key", "") or ""
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    head = lines[0] if lines else type(inner).__name__
    if "not in" in head and key:
        parent = key.rpartition(".")[0]
        valid = _valid_keys(parent)
        if parent and not valid:  # a free-form section (sampler, space): keys are added with +
            return f"`{key}` is not set in `{parent}`; add it with +{key}=VALUE."
        where = f"`{parent}`" if parent else "the config"
        return f"unknown key `{key}`; valid keys in {where}: {valid}."
    if key:
        hint = next((h for needle, h in _TYPE_HINTS.items() if needle in head), "")
        return f"`{key}`: {head}" + (f"; valid: {hint}." if hint else ".")
    if "Could not find" in head:  # a config group option that does not exist
        options = [
            ln for ln in lines[1:] if not ln.startswith(("Available", "Config search", "provider="))
        ]
        group = head.split("'")[-2].split("/")[0] if "'" in head else "group"
        message = head.removeprefix("In 'config': ")
        return f"{message}; valid {group} options: {', '.join(options)}."
    return " ".join(ln for ln in lines if not ln.startswith("See https://"))


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def to_run_config(raw: DictConfig) -> RunConfig:
    data = {k: _plain(raw[k]) for k in RUN_SECTIONS}
    return RunConfig.from_dict(data)


def load(overrides: list[str]) -> Loaded:
    """Compose, type and check every value (alone) of the config; ConfigError if any is wrong."""
    raw = compose_config(overrides)
    unknown = sorted(set(raw) - set(_valid_keys("")))
    if unknown:  # `+key=value` can add keys the schema does not know: they would be ignored
        raise ConfigError(f"unknown key(s) {unknown}; valid top-level keys: {_valid_keys('')}.")
    try:  # interpolations (`${...}`) resolve here, and can fail here
        loaded = Loaded(
            to_run_config(raw),
            SweepConfig(**_plain(raw.sweep)),
            LauncherConfig(**_plain(raw.launcher)),
            RunOptions(**_plain(raw.run)),
            ExportOptions(**_plain(raw.export)),
            _plain(raw.space) or {},
            _plain(raw.sampler) or {},
            list(overrides),
            raw,
        )
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err)) from None
    check_tuner_sections(loaded)
    validate_values(loaded.run)
    return loaded


_NAME = Rule(
    "str",
    pattern=r"(?!\.)[\w.+-]{1,100}",
    what="a plain folder name: 1 to 100 letters, digits or '._+-', not starting with '.'",
)
_PATH = Rule("str", pattern=r".+", what="a non-empty path without control characters")
# Every field of the tuner's own sections (a test checks none is missing).
TUNER_RULES: dict[str, Rule] = {
    "sweep.name": _NAME,
    "sweep.n_trials": Rule("int", 1),
    "sweep.storage": Rule("str"),
    "sweep.out_dir": _PATH,
    "sweep.seed": Rule("int", 0, SEED_MAX),
    "sweep.allow_other_machine": Rule("bool"),
    "launcher.timeout_s": Rule("float", 0, 10**7, low_open=True),
    "launcher.max_ranks": Rule("int", 1, 2**20),
    "run.out": Rule("str"),
    "export.out": _PATH,
}
# keyword arguments of Optuna's samplers that take counts or seeds; the sampler classes
# check little themselves (a seed of -1 fails only at the first trial)
SAMPLER_RULES: dict[str, Rule] = {
    "seed": Rule("int", 0, SEED_MAX),
    "n_startup_trials": Rule("int", 0, 10**6),
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
    check_all({k: v for k, v in values.items() if k in TUNER_RULES}, TUNER_RULES)
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
            f"`sampler` could not be created from {shown(cfg.sampler)}: {_one_line(err)}"
        ) from None
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise ConfigError(
            f"`sampler._target_` must name an Optuna sampler, but got "
            f"sampler._target_={shown(cfg.sampler['_target_'])}."
        )


def replace_keys(run: RunConfig, values: dict[str, Any]) -> RunConfig:
    """A copy of ``run`` with dotted keys (e.g. ``{"parallel.dp": 2}``) replaced."""
    data = run.to_dict()
    for key, value in values.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return RunConfig.from_dict(data)


def run_keys() -> dict[str, type]:
    """Every dotted key of a RunConfig and its value's type, e.g. ``"train.micro_batch": int``."""
    out: dict[str, type] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                out[prefix + f.name] = type(value)

    walk(RunConfig(), "")
    out.pop("out", None)  # where to write results is not a tunable
    return out
