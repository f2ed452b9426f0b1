"""The tuner's typed config: Hydra composes YAML and overrides against the schema, once.

The engine's own dataclasses are the schema of the run sections (tuner/schema.py), so a key
the engine does not know is refused by Hydra before anything runs; the tuner adds the sweep,
launcher and run sections. ``load()`` returns plain objects; nothing downstream sees a
DictConfig. The names other modules use are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from engine.config import ConfigError, RunConfig
from engine.validate import resolve_sources, validate_values
from tuner.config_checks import TUNER_RULES, check_sampler, check_tuner_sections
from tuner.hydra_errors import check_overrides, explain
from tuner.schema import (
    OBJECTIVES,
    PROFILED_OBJECTIVES,
    RUN_SECTIONS,
    ExportOptions,
    LauncherConfig,
    RunOptions,
    SweepConfig,
    TunerConfig,
    replace_keys,
    run_keys,
    schema_keys,
)

__all__ = [
    "CONF_DIR",
    "OBJECTIVES",
    "PROFILED_OBJECTIVES",
    "RUN_SECTIONS",
    "TUNER_RULES",
    "ExportOptions",
    "LauncherConfig",
    "Loaded",
    "RunOptions",
    "SweepConfig",
    "TunerConfig",
    "check_sampler",
    "compose_config",
    "load",
    "replace_keys",
    "run_keys",
    "to_run_config",
]

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


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
    check_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(explain(err)) from None


def to_container(node: Any) -> Any:
    """A composed node as plain Python (dicts, lists, scalars), interpolations resolved."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def to_run_config(raw: DictConfig) -> RunConfig:
    return RunConfig.from_dict({k: to_container(raw[k]) for k in RUN_SECTIONS})


def load(overrides: list[str]) -> Loaded:
    """Compose, type and check every value (alone) of the config; ConfigError if any is wrong."""
    raw = compose_config(overrides)
    valid = schema_keys("")
    unknown = sorted(set(raw) - set(valid))
    if unknown:  # `+key=value` can add keys the schema does not know: they would be ignored
        raise ConfigError(f"unknown key(s) {unknown}; valid top-level keys: {valid}.")
    try:  # interpolations (`${...}`) resolve here, and can fail here
        loaded = Loaded(
            to_run_config(raw),
            SweepConfig(**to_container(raw.sweep)),
            LauncherConfig(**to_container(raw.launcher)),
            RunOptions(**to_container(raw.run)),
            ExportOptions(**to_container(raw.export)),
            to_container(raw.space) or {},
            to_container(raw.sampler) or {},
            list(overrides),
            raw,
        )
    except OmegaConfBaseException as err:
        raise ConfigError(explain(err)) from None
    check_tuner_sections(loaded)
    validate_values(loaded.run)
    loaded.run = resolve_sources(loaded.run)  # model=hf's shape; data=tokens checked
    return loaded
