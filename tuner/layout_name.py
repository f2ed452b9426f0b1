"""A layout in words: ``dp2 · ZeRO-3 · tp1 · pp1 · mb4 · bf16 · no AC``.

One function names a run everywhere (the report's tables and figures, the progress lines, the
sweep's last lines, the comparison of sweeps), so the same layout reads the same way wherever
it appears. Derived degrees are shown (dp from the world size) and knobs that do nothing in
the layout are left out (a pipeline schedule without a pipeline, sequence parallelism without
tensor parallelism, virtual stages where the schedule does not loop).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from engine.config import PP_SCHEDULES, ConfigError, RunConfig
from engine.validate import resolve
from tuner.config import replace_keys

if TYPE_CHECKING:
    from collections.abc import Iterable

    import optuna

logger = logging.getLogger(__name__)

SEP = " · "
#: Keys the layout's words already state; any other searched key is added as ``name=value``.
NAMED_KEYS: frozenset[str] = frozenset(
    {
        "parallel.world_size",
        "parallel.dp",
        "parallel.zero",
        "parallel.tp",
        "parallel.sp",
        "parallel.pp",
        "parallel.pp_schedule",
        "parallel.pp_virtual_stages",
        "train.micro_batch",
        "train.precision",
        "train.activation_checkpointing",
    }
)
# long names of the other knobs, shortened in names only (tables and CSV keep full keys)
SHORT = {"global_batch": "gb", "reduce_dtype": "reduce", "ddp_bucket_mb": "bucket_mb"}


def _value(cfg: RunConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _dp(cfg: RunConfig) -> str:
    try:
        return str(resolve(cfg).parallel.dp)
    except ConfigError:  # tp * pp does not divide the world size: the layout is pruned
        return "?"


def _pipeline(pp: int, schedule: str, virtual: int) -> str:
    if pp == 1:  # virtual stages without a pipeline are why such a layout is pruned: said
        return "pp1" if virtual == 1 else f"pp1×{virtual}"
    loops = PP_SCHEDULES.get(schedule, "single") != "single"
    stages = f"×{virtual}" if loops or virtual > 1 else ""
    return f"pp{pp} {schedule}{stages}"


def layout_words(
    *,
    dp: int | str,
    zero: int,
    tp: int,
    sp: bool,
    pp: int,
    pp_schedule: str,
    pp_virtual_stages: int,
    micro_batch: int,
    precision: str,
    activation_checkpointing: str,
) -> str:
    """A layout in words, from its degrees and knobs (the planner names its rows with it
    too, so a planned layout reads as the sweep that measures it will name it)."""
    dp = str(dp)
    words = [f"dp{dp}"]
    if zero:
        words.append(f"ZeRO-{zero}")
    elif dp not in ("1", "?"):  # stage 0 with data parallelism is plain DDP
        words.append("DDP")
    words.append(f"tp{tp}+SP" if sp and tp > 1 else f"tp{tp}")
    words.append(_pipeline(pp, pp_schedule, pp_virtual_stages))
    words += [f"mb{micro_batch}", precision]
    ac = activation_checkpointing
    words.append("no AC" if ac == "none" else f"{ac} AC")
    return SEP.join(words)


def layout_name(cfg: RunConfig, *, also: Iterable[str] = ()) -> str:
    """The run's layout in words; ``also``: further searched keys to state (``lr=0.001``)."""
    p, t = cfg.parallel, cfg.train
    words = [
        layout_words(
            dp=_dp(cfg),
            zero=p.zero,
            tp=p.tp,
            sp=p.sp,
            pp=p.pp,
            pp_schedule=p.pp_schedule,
            pp_virtual_stages=p.pp_virtual_stages,
            micro_batch=t.micro_batch,
            precision=t.precision,
            activation_checkpointing=t.activation_checkpointing,
        )
    ]
    for key in also:
        if key not in NAMED_KEYS:
            name = key.split(".")[-1]
            words.append(f"{SHORT.get(name, name)}={_value(cfg, key)}")
    return SEP.join(words)


def sweep_base(study: optuna.Study) -> RunConfig:
    """The run a sweep's trials start from: its fixed settings, recorded in the study (the
    searched keys take their defaults until a trial's parameters replace them). A study
    without that record (built by hand) starts from the defaults."""
    from tuner.resume import FIXED_ATTR  # optuna: imported when a study is read, not before

    fixed = study.user_attrs.get(FIXED_ATTR) or {}
    try:
        return RunConfig.from_dict(_merge(RunConfig().to_dict(), fixed))
    except ConfigError as err:  # recorded by a version with other keys: named from defaults
        logger.warning("layouts named from the defaults: the sweep's fixed settings: %s", err)
        return RunConfig()


def _merge(into: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(into)
    for key, value in update.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def trial_config(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """The run a trial's parameters launch from ``base`` (dp left as configured: derived at
    launch)."""
    return replace_keys(base, {k: v for k, v in params.items() if v is not None})


def trial_names(study: optuna.Study) -> dict[int, str]:
    """Trial number -> its layout's name, stating every searched key the words do not."""
    base = sweep_base(study)
    trials = study.get_trials(deepcopy=False)
    searched: dict[str, None] = {}
    for trial in trials:
        searched.update(dict.fromkeys(trial.params))
    return {t.number: _name(base, t.params, searched) for t in trials}


def _name(base: RunConfig, params: dict[str, Any], searched: Iterable[str]) -> str:
    try:
        return layout_name(trial_config(base, params), also=searched)
    except (ConfigError, KeyError, TypeError):  # a key this version does not have
        return " ".join(f"{k}={v}" for k, v in params.items())


def unique_labels(names: Iterable[str], numbers: Iterable[int]) -> list[str]:
    """Layout names as figure labels: a name that appears more than once (the same layout
    measured again, or failed and run again) gets its trial number after it."""
    names, numbers = list(names), list(numbers)
    seen = {n: names.count(n) for n in names}
    return [n if seen[n] == 1 else f"{n} (#{k})" for n, k in zip(names, numbers, strict=True)]
