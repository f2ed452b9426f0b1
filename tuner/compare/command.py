"""`python -m tuner compare NAME NAME [NAME...] [overrides]`: the glue between the command
line, the sweeps' studies and the page. Every name is checked before anything is read or
written, so a missing sweep creates no file, folder or study."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from engine.config import ConfigError
from engine.validate_values import check
from tuner.config import Loaded
from tuner.config_checks import TUNER_RULES
from tuner.schema import CompareOptions

# a page name made of every sweep's name stays well under a file name's 255 bytes
_NAME_BUDGET = 160


def split_names(args: list[str]) -> tuple[list[str], list[str]]:
    """(sweep names, Hydra overrides): an override has "=" or starts with +/~; the rest are
    names, each a valid sweep.name, at least two, none twice."""
    names = [a for a in args if "=" not in a and not a.startswith(("+", "~", "-"))]
    overrides = [a for a in args if a not in names]
    if len(names) < 2:
        raise ConfigError(
            f"`tuner compare` needs at least two sweep names, but got {names or 'none'}: "
            "python -m tuner compare NAME NAME [NAME...] [KEY=VALUE ...]."
        )
    for name in names:
        check("compare: sweep name", name, TUNER_RULES["sweep.name"])
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"`tuner compare` names sweep(s) {twice} more than once.")
    return names, overrides


def _named(cfg: Loaded, name: str) -> Loaded:
    return dataclasses.replace(cfg, sweep=dataclasses.replace(cfg.sweep, name=name))


def default_page(cfg: Loaded, names: list[str]) -> Path:
    stem = "-vs-".join(names)
    if len(stem) > _NAME_BUDGET:
        stem = f"{names[0]}-vs-{len(names) - 1}-sweeps"
    return Path(cfg.sweep.out_dir) / "compare" / f"{stem}.html"


def cmd_compare(cfg: Loaded, names: list[str]) -> int:
    import optuna

    from tuner.compare.page import render
    from tuner.compare.sweeps import from_study, model_difference
    from tuner.config import to_container
    from tuner.outputs import atomic_write_text, check_file
    from tuner.study import storage_for, study_exists

    options = CompareOptions(**to_container(cfg.raw.compare))
    missing = [n for n in names if not study_exists(_named(cfg, n))]
    if missing:
        where = cfg.sweep.storage or f"{cfg.sweep.out_dir}/<name>/study.db"
        raise ConfigError(
            f"no sweep named {', '.join(missing)} in {where}; "
            "run `python -m tuner sweep sweep.name=...` first."
        )
    out = Path(options.out) if options.out else default_page(cfg, names)
    sweeps = []
    for name in names:
        named = _named(cfg, name)
        study = optuna.load_study(study_name=name, storage=storage_for(named))
        sweeps.append(from_study(study))
    differ = model_difference(sweeps)
    if differ and not options.force:
        raise ConfigError(f"{differ}; compare them anyway with compare.force=true.")
    check_file(out, key="compare.out")  # creates its folder
    atomic_write_text(out, render(sweeps, note=f"{differ}: compared as asked." if differ else ""))
    print(f"open {out.resolve()} in a browser")
    return 0
