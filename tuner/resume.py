"""When a sweep may continue an existing study: every rule in one place.

A sweep is identified by ``sweep.name``. Its identity — objectives, search space (each key's
distribution), sampler spec and fixed run settings — is stored in the study when it is created.
Running with the same name continues the study only if the identity is unchanged: otherwise the
study would mix measurements taken under other settings, or hand the sampler parameters it did
not propose (Optuna refuses a categorical whose choices changed, mid-trial). A refusal is one
ConfigError raised before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    distribution_to_json,
    json_to_distribution,
)

from engine.config import ConfigError

# study user attributes holding the identity
OBJECTIVES_ATTR = "objectives"
SEARCHED_ATTR = "searched"
DISTRIBUTIONS_ATTR = "distributions"  # key -> Optuna distribution JSON
SAMPLER_ATTR = "sampler"
FIXED_ATTR = "fixed_settings"


@dataclass(frozen=True)
class SweepIdentity:
    """What must not change between the runs of one sweep."""

    objectives: list[str]
    distributions: dict[str, BaseDistribution]
    sampler: dict[str, Any]  # the composed `sampler` section (_target_ and its arguments)
    fixed: dict[str, Any]  # run settings without the searched keys

    def record(self, study: optuna.Study) -> None:
        """Store the identity in a newly created study."""
        study.set_user_attr(OBJECTIVES_ATTR, list(self.objectives))
        study.set_user_attr(SEARCHED_ATTR, list(self.distributions))
        study.set_user_attr(
            DISTRIBUTIONS_ATTR, {k: distribution_to_json(d) for k, d in self.distributions.items()}
        )
        study.set_user_attr(SAMPLER_ATTR, _as_stored(self.sampler))
        study.set_user_attr(FIXED_ATTR, _as_stored(self.fixed))

    def is_recorded_in(self, study: optuna.Study) -> bool:
        return FIXED_ATTR in study.user_attrs


def check_resumable(name: str, study: optuna.Study, identity: SweepIdentity) -> None:
    """Refuse (ConfigError, one line, every difference named) to continue ``study`` with an
    identity other than the one stored. Studies from before an attribute was stored are checked
    on what they hold."""
    attrs = study.user_attrs
    problems = []
    stored_objectives = attrs.get(OBJECTIVES_ATTR)
    if stored_objectives is not None and list(stored_objectives) != identity.objectives:
        problems.append(f"sweep.objectives={stored_objectives}, now {identity.objectives}")
    problems.extend(_space_changes(attrs, identity.distributions))
    stored_sampler = attrs.get(SAMPLER_ATTR)
    if stored_sampler is not None:
        problems.extend(f"sampler {d}" for d in _diff(stored_sampler, _as_stored(identity.sampler)))
    changed = _diff(attrs.get(FIXED_ATTR, {}), _as_stored(identity.fixed))
    if changed:
        problems.append(f"fixed settings {', '.join(changed[:6])}")
    if problems:
        raise ConfigError(
            f"sweep.name={name} exists with other settings ({'; '.join(problems)}); resuming "
            "would mix measurements. Use the same command line or another sweep.name."
        )


def _space_changes(attrs: dict[str, Any], now: dict[str, BaseDistribution]) -> list[str]:
    stored = attrs.get(DISTRIBUTIONS_ATTR)
    if stored is None:  # older studies stored the searched keys only
        searched = attrs.get(SEARCHED_ATTR, [])
        if sorted(searched) != sorted(now):
            return [f"searched keys {searched}, now {list(now)}"]
        return []
    before = {k: json_to_distribution(v) for k, v in stored.items()}
    out = []
    for key in sorted(set(before) | set(now)):
        # choices in another order change the meaning of the stored parameter indices too
        if before.get(key) != now.get(key):
            out.append(f"space.{key}={_show(before.get(key))}, now {_show(now.get(key))}")
    return out


def _show(dist: BaseDistribution | None) -> str:
    if dist is None:
        return "(not searched)"
    if isinstance(dist, CategoricalDistribution):
        return json.dumps(list(dist.choices)).replace(" ", "")
    args = {k: v for k, v in vars(dist).items() if v is not None and v is not False}
    return json.dumps(args).replace(" ", "")


def _as_stored(value: Any) -> Any:
    """``value`` as the study's JSON storage returns it (tuples become lists)."""
    return json.loads(json.dumps(value))


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out.extend(_diff(a.get(k), b.get(k), f"{prefix}{k}."))
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]
