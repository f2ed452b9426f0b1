"""The sweeps a comparison reads: each study's trials, what it held fixed, and each measured
trial's configuration — enough to tell which trials of two sweeps ran the same layout.

Two sweeps compared are usually the same search under different conditions (another
precision, machine or torch). A *condition* is a setting every sweep held fixed, at values
that differ between them; the *layout* of a trial is its normalised configuration without
the conditions, so that "dp2 mb4" under fp32 and under bf16 are one layout measured twice.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from engine.config import ConfigError, RunConfig
from tuner.planner.rank import PlanRow
from tuner.planner.show import describe
from tuner.report.data import SweepSummary, machines_used, summarize
from tuner.report.frame import trials_frame
from tuner.space import layout_key
from tuner.study import stored_result

if TYPE_CHECKING:
    from collections.abc import Sequence

    import optuna

logger = logging.getLogger(__name__)

#: Settings that name a trial's own files, not what it runs.
_PER_TRIAL = ("out", "progress", "checkpoint.dir", "debug.dump_params")


def flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict by dotted key (``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _normalised(config: dict[str, Any]) -> dict[str, Any]:
    """The run a trial launched, by dotted key, normalised as the sweep recognises repeats
    (tuner.space.layout_key); the stored config as it is where it no longer resolves."""
    try:
        data = json.loads(layout_key(RunConfig.from_dict(config), {}))
    except (ConfigError, KeyError, TypeError, ValueError):
        data = {}
    if set(data) <= {"params"}:  # layout_key's answer for a layout it cannot resolve
        data = config
    return {k: v for k, v in flat(data).items() if k not in _PER_TRIAL}


@dataclass(frozen=True)
class Measured:
    """A completed, non-repeat trial with its throughput and its run configuration."""

    number: int
    config: dict[str, Any]  # normalised, by dotted key
    label: str  # the layout in its own terms (the planner's wording)
    tokens_per_s: float
    ci_low: float | None
    ci_high: float | None
    peak_mem_bytes: float | None


@dataclass(frozen=True)
class Sweep:
    """One sweep as a comparison reads it."""

    name: str
    summary: SweepSummary
    frame: pd.DataFrame  # tuner.report.frame.trials_frame
    fixed: dict[str, Any]  # the settings it held fixed, by dotted key
    searched: tuple[str, ...]
    model: dict[str, Any]  # the model section it measured
    machine: str  # where it measured ("" when not recorded)
    measured: tuple[Measured, ...]

    @property
    def best(self) -> Measured | None:
        """The fastest measured trial (tokens/s; ties: lowest number)."""
        return max(self.measured, key=lambda m: (m.tokens_per_s, -m.number), default=None)


def _value(row: pd.Series, column: str) -> float | None:
    value = row.get(column)
    return None if value is None or pd.isna(value) else float(value)


def _measured(study: optuna.Study, df: pd.DataFrame) -> tuple[Measured, ...]:
    ok = df[(df["state"] == "COMPLETE") & df["duplicate_of"].isna() & df["tokens_per_s"].notna()]
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    out = []
    for _, row in ok.iterrows():
        config = stored_result(trials[int(row["number"])]).get("config")
        if not config:  # stored before results carried their configuration
            logger.warning("trial %d has no stored configuration; left out", row["number"])
            continue
        try:
            label = describe(PlanRow.of(RunConfig.from_dict(config), feasible=True))
        except (ConfigError, KeyError, TypeError, ValueError):
            label = f"trial {int(row['number'])}"
        out.append(
            Measured(
                number=int(row["number"]),
                config=_normalised(config),
                label=label,
                tokens_per_s=float(row["tokens_per_s"]),
                ci_low=_value(row, "tokens_per_s_ci_low"),
                ci_high=_value(row, "tokens_per_s_ci_high"),
                peak_mem_bytes=_value(row, "peak_mem_bytes"),
            )
        )
    return tuple(out)


def from_study(study: optuna.Study) -> Sweep:
    """Read one sweep's study (nothing is written to it)."""
    df = trials_frame(study)
    summary = summarize(study, df)
    attrs = study.user_attrs
    fixed = flat(attrs.get("fixed_settings") or {})
    measured = _measured(study, df)
    model = {k.removeprefix("model."): v for k, v in fixed.items() if k.startswith("model.")}
    if not model and measured:  # the model was searched: the first measured trial's
        model = {
            k.removeprefix("model."): v
            for k, v in measured[0].config.items()
            if k.startswith("model.")
        }
    used = machines_used(study, df)
    return Sweep(
        name=summary.sweep_name,
        summary=summary,
        frame=df,
        fixed=fixed,
        searched=tuple(attrs.get("searched") or summary.params),
        model=model,
        machine="; ".join(m.description for m in used),
        measured=measured,
    )


def conditions(sweeps: Sequence[Sweep]) -> list[str]:
    """The settings every sweep held fixed, at values that are not the same in all of them."""
    common = set.intersection(*(set(s.fixed) for s in sweeps)) if sweeps else set()
    return sorted(k for k in common if len({json.dumps(s.fixed[k]) for s in sweeps}) > 1)


def layout_of(measured: Measured, skip: Sequence[str]) -> str:
    """The layout a trial ran, as a key: its configuration without the settings ``skip``."""
    return json.dumps({k: v for k, v in measured.config.items() if k not in skip}, default=str)


def model_difference(sweeps: Sequence[Sweep]) -> str | None:
    """None when every sweep measured the same model, else what differs, in one line."""
    ref = sweeps[0]
    for other in sweeps[1:]:
        both = {*ref.model, *other.model}
        keys = sorted(k for k in both if ref.model.get(k) != other.model.get(k))
        if keys:
            shown = ", ".join(f"model.{k} {ref.model.get(k)} vs {other.model.get(k)}" for k in keys)
            return f"{ref.name} and {other.name} measured different models ({shown})"
    return None
