"""The sweep's winner, exported: ``reports/<name>/best/`` holds

- ``config.yaml``: every run setting of the best trial, as a Hydra overlay that
  ``python -m tuner run 'hydra.searchpath=[file://reports/<name>]' +best=config`` composes
  (the same RunConfig the sweep launched);
- ``overrides.txt``: the same run as one line of overrides (``eval "python -m tuner run
  $(cat overrides.txt)"``);
- ``deepspeed.json`` and ``torchtitan.toml``: the layout in those frameworks' terms
  (tuner/report/frameworks.py), and ``NOTES.md``: what did not carry over to each, and why.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from engine.config import ConfigError, RunConfig
from tuner.config import RUN_SECTIONS
from tuner.layout_name import layout_name, sweep_base, trial_config
from tuner.outputs import atomic_write_text
from tuner.report import frameworks
from tuner.report.data import RUN_COMMAND
from tuner.resume import FIXED_ATTR

if TYPE_CHECKING:
    import optuna

    from tuner.report.data import SweepSummary

logger = logging.getLogger(__name__)

BEST_DIR = "best"
#: The Hydra group the overlay is composed as (``+best=config``).
GROUP, OPTION = "best", "config"


def best_config(study: optuna.Study, number: int) -> RunConfig:
    """The run trial ``number`` launched: the sweep's fixed settings and its parameters."""
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return trial_config(sweep_base(study), trial.params)


def config_yaml(cfg: RunConfig, *, header: str) -> str:
    """Every run section of ``cfg`` as a global Hydra overlay (``# @package _global_``)."""
    data: dict[str, Any] = {k: v for k, v in cfg.to_dict().items() if k in RUN_SECTIONS}
    data["train"]["betas"] = list(data["train"]["betas"])
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return "# @package _global_\n" + comments + yaml.safe_dump(data, sort_keys=False)


def reproduce_commands(sweep_dir: Path) -> tuple[str, str]:
    """(the command that composes config.yaml, the one that reads overrides.txt)."""
    search = shlex.quote(f"hydra.searchpath=[file://{sweep_dir}]")
    return (
        f"{RUN_COMMAND} {search} +{GROUP}={OPTION}",
        f'eval "{RUN_COMMAND} $(cat {shlex.quote(str(sweep_dir / BEST_DIR / "overrides.txt"))})"',
    )


def write_best(study: optuna.Study, summary: SweepSummary, sweep_dir: Path) -> Path | None:
    """Write ``best/`` for the sweep's best trial; None (nothing written) when there is none."""
    if summary.best_number is None or summary.best_command is None:
        return None
    try:
        cfg = best_config(study, summary.best_number)
    except (ConfigError, KeyError, TypeError) as err:  # a study of a version with other keys
        logger.warning("best/ not written: the best trial's settings do not fit: %s", err)
        return None
    out = sweep_dir / BEST_DIR
    out.mkdir(parents=True, exist_ok=True)
    name = layout_name(cfg, also=summary.params)
    from_yaml, from_line = reproduce_commands(sweep_dir)
    header = f"{name}: trial {summary.best_number} of sweep {summary.sweep_name}\n{from_yaml}"
    atomic_write_text(out / "config.yaml", config_yaml(cfg, header=header))
    overrides = summary.best_command.removeprefix(RUN_COMMAND).strip()
    atomic_write_text(out / "overrides.txt", overrides + "\n")
    ds, ds_notes = frameworks.deepspeed_config(cfg)
    atomic_write_text(out / "deepspeed.json", json.dumps(ds, indent=2) + "\n")
    tt, tt_notes = frameworks.torchtitan_config(cfg)
    toml_header = f"{name}\nWhat this file does not say: NOTES.md next to it."
    atomic_write_text(out / "torchtitan.toml", frameworks.to_toml(tt, header=toml_header))
    notes = [
        f"# Best layout of sweep {summary.sweep_name}: {name}",
        "",
        f"Trial {summary.best_number}. Reproduce it with either command:",
        "",
        f"    {from_yaml}",
        f"    {from_line}",
        "",
    ]
    if FIXED_ATTR not in study.user_attrs:
        notes += [
            "The study did not record the sweep's fixed settings: config.yaml starts from the "
            "defaults; overrides.txt is the reliable record.",
            "",
        ]
    for title, items in (("deepspeed.json", ds_notes), ("torchtitan.toml", tt_notes)):
        notes += [f"## {title}: not carried over", "", *(f"- {n}" for n in items), ""]
    atomic_write_text(out / "NOTES.md", "\n".join(notes))
    return out
