"""Checks of a sweep before its first launch: the space it searches (what the user typed wins),
objectives every trial will measure, and at least one layout that can run here."""

from __future__ import annotations

from engine.config import ConfigError
from tuner import space as space_mod
from tuner.config import OBJECTIVES, PROFILED_OBJECTIVES, Loaded, replace_keys


def sweep_space(cfg: Loaded) -> space_mod.SearchSpace:
    """The sweep's space, less the keys the command line fixes (the user's value wins)."""
    remaining, fixed = space_mod.fixed_by_command_line(cfg.space, cfg.overrides)
    if fixed and not remaining:
        raise ConfigError(
            f"the command line fixes every key the space searches ({' '.join(fixed)}), so "
            "there is nothing to search; run one configuration with `python -m tuner run`, or "
            "add keys to search with space.KEY=[...]."
        )
    return space_mod.build(remaining, cfg.run)


# enumerating more than this many configurations of a finite space before the first launch
# would cost more than it saves; larger spaces are checked trial by trial only
MAX_CHECKED_UP_FRONT = 5000


def check_some_layout_runs(cfg: Loaded, space: space_mod.SearchSpace) -> None:
    """A space none of whose layouts can run stops here, with the reasons grouped."""
    from tuner.feasibility import check_space_runs

    if space.size is None or space.size > MAX_CHECKED_UP_FRONT:
        return
    seen, candidates = set(), []
    for params in space.grid():
        key = space_mod.layout_key(cfg.run, params)
        if key not in seen:
            seen.add(key)
            candidates.append(replace_keys(cfg.run, params))
    check_space_runs(candidates, cfg.launcher, space_mod.user_settings(cfg.overrides))


def check_objectives(cfg: Loaded, space: space_mod.SearchSpace) -> None:
    """Refuse objectives that some trial of this sweep would not measure, before any launch."""
    needs = [o for o in cfg.sweep.objectives if o in PROFILED_OBJECTIVES]
    dist = space.distributions.get("measure.profile_steps")
    if dist is None:
        can_be_off = cfg.run.measure.profile_steps == 0
    else:
        can_be_off = 0 in getattr(dist, "choices", ()) or getattr(dist, "low", 1) <= 0
    if needs and can_be_off:
        raise ConfigError(
            f"sweep.objectives={cfg.sweep.objectives} includes {needs}, measured in the profiled "
            "steps only, but measure.profile_steps can be 0 in this sweep; valid: "
            "measure.profile_steps >= 1, or objectives from "
            f"{[o for o in OBJECTIVES if o not in PROFILED_OBJECTIVES]}."
        )
