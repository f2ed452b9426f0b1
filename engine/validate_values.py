"""One rule per setting: its type and range, checked alone before any process starts.

A table rather than scattered ifs, so that every field of the run config has a rule (a test
checks the table covers them all) and every refusal reads the same: the key, the value and
what is valid. Ranges are generous bounds on sense, not tuning advice: they stop values that
would fail much later (a negative seed), mislead silently (``lr=nan`` trains nothing) or
overflow (a trillion-token vocabulary).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from engine.config import (
    AC_MODES,
    COMPILE_MODES,
    DATA_KINDS,
    DEVICES,
    MLP_TYPES,
    MODEL_SOURCES,
    NORM_TYPES,
    POSITIONS,
    PP_SCHEDULES,
    PRECISIONS,
    TOKEN_DTYPES,
    ZERO_STAGES,
    ConfigError,
    RunConfig,
)

MAX_STEPS = 10**9  # step counters: far beyond any run, far below int64 trouble
SEED_MAX = 2**32 - 1  # numpy's RandomState (and so Optuna's samplers) takes seeds below 2**32
_SHOWN = 80  # characters of a refused value echoed in the error


@dataclass(frozen=True)
class Rule:
    """What one setting may hold."""

    kind: str  # int | float | bool | str | choice | floats | list
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # `low` itself is refused (e.g. a learning rate of 0)
    choices: tuple = ()
    max_len: int = 4096  # str: characters
    pattern: str = ""  # str: a full-match regex, described by `what`
    length: int = 0  # floats: exact number of items
    item: Rule | None = None  # list: what each item may hold
    min_items: int = 1  # list: fewest items
    what: str = ""  # overrides the generated description

    def describe(self) -> str:
        if self.what:
            return self.what
        if self.kind == "choice":
            return f"one of {list(self.choices)}"
        if self.kind == "bool":
            return "true or false"
        if self.kind == "str":
            return f"a string of at most {self.max_len} characters, without control characters"
        noun = {"int": "an integer", "float": "a finite number"}.get(self.kind, "")
        if self.kind == "list":
            return (
                f"a list of at least {self.min_items} distinct items, each {self.item.describe()}"
            )
        if self.kind == "floats":
            noun = f"a list of {self.length} finite numbers, each"
        return f"{noun} {_range(self)}".strip()

    def accepts(self, value: Any) -> bool:
        if self.kind == "choice":
            return not isinstance(value, bool) and value in self.choices
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "str":
            return (
                isinstance(value, str)
                and len(value) <= self.max_len
                and not any(c < " " or c == "\x7f" for c in value)
                and (not self.pattern or re.fullmatch(self.pattern, value) is not None)
            )
        if self.kind == "list":
            return (
                isinstance(value, (list, tuple))
                and len(value) >= self.min_items
                and len(set(map(repr, value))) == len(value)
                and all(self.item.accepts(v) for v in value)
            )
        if self.kind == "floats":
            return (
                isinstance(value, (list, tuple))
                and len(value) == self.length
                and all(self._in_range(v, float) for v in value)
            )
        return self._in_range(value, int if self.kind == "int" else float)

    def _in_range(self, value: Any, kind: type) -> bool:
        types = (int,) if kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, types):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or value <= self.high


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _range(rule: Rule) -> str:
    if rule.low is None and rule.high is None:
        return ""
    if rule.high is None:
        return f"{'>' if rule.low_open else '>='} {_num(rule.low)}"
    return f"in {'(' if rule.low_open else '['}{_num(rule.low)}, {_num(rule.high)}]"


def shown(value: Any) -> str:
    """``repr(value)``, cut to one readable piece (a 300-character name is not echoed whole)."""
    text = repr(value)
    if len(text) <= _SHOWN:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[:_SHOWN]}...{size}"


def check(key: str, value: Any, rule: Rule) -> None:
    """Raise ConfigError naming key, value and what is valid unless ``rule`` accepts ``value``."""
    if not rule.accepts(value):
        raise ConfigError(f"`{key}` must be {rule.describe()}, but got {key}={shown(value)}.")


def check_all(values: dict[str, Any], rules: dict[str, Rule]) -> None:
    for key, rule in rules.items():
        check(key, values[key], rule)


def _int(low: int, high: int | None = None) -> Rule:
    return Rule("int", low, high)


def _float(low: float, high: float, *, low_open: bool = False) -> Rule:
    return Rule("float", low, high, low_open=low_open)


_PEAK = (
    "a finite number > 0 (or 0: the datasheet table on GPUs, a measured matmul on CPUs), at most {}"
)
# Every field of RunConfig, by dotted key (a test checks none is missing).
RUN_RULES: dict[str, Rule] = {
    "model.name": Rule("str", max_len=100),
    "model.n_layers": _int(1, 4096),
    "model.n_heads": _int(1, 4096),
    "model.d_model": _int(1, 2**20),
    "model.d_ff": _int(1, 2**22),
    "model.vocab_size": _int(1, 2**24),  # 16.7M ids: 60x the largest vocabularies in use
    "model.vocab_pad_multiple": _int(1, 2**16),
    "model.seq_len": _int(1, 2**24),
    "model.mlp": Rule("choice", choices=MLP_TYPES),
    "model.norm": Rule("choice", choices=NORM_TYPES),
    "model.position": Rule("choice", choices=POSITIONS),
    "model.bias": Rule("bool"),
    "model.norm_eps": _float(0, 1, low_open=True),
    "model.init_std": _float(0, 1, low_open=True),
    "model.source": Rule("choice", choices=MODEL_SOURCES),
    "model.hf_config": Rule("str"),
    "model.factory": Rule(
        "str",
        pattern=r"|[A-Za-z_][\w.]*:[A-Za-z_]\w*",
        what='"pkg.module:function" (a module Python can import, and a function in it)',
    ),
    "model.n_kv_heads": _int(0, 4096),  # 0: as many as model.n_heads
    "parallel.world_size": _int(0, 2**20),  # 0: not fixed
    "parallel.dp": _int(0, 2**20),  # 0: world_size / (tp * pp)
    "parallel.tp": _int(1, 4096),
    "parallel.pp": _int(1, 4096),
    "parallel.zero": Rule("choice", choices=ZERO_STAGES),
    "parallel.sp": Rule("bool"),
    "parallel.pp_schedule": Rule("choice", choices=tuple(PP_SCHEDULES)),
    "parallel.pp_virtual_stages": _int(1, 1024),
    "parallel.ddp_bucket_mb": _float(0, 2**20, low_open=True),
    "parallel.fsdp_unit_layers": _int(0, 2**20),  # 0: the whole model as one unit
    "train.micro_batch": _int(1, 2**24),
    "train.global_batch": _int(1, 2**30),
    "train.precision": Rule("choice", choices=PRECISIONS),
    "train.steps": _int(1, MAX_STEPS),
    "train.warmup_steps": _int(0, MAX_STEPS),
    "train.seed": _int(0, SEED_MAX),
    "train.lr": _float(0, 10, low_open=True),
    "train.weight_decay": _float(0, 10),
    "train.betas": Rule("floats", 0, 1, length=2, what="a list of 2 numbers, each in [0, 1)"),
    "train.grad_clip": _float(0, 1e9),  # 0: no clipping
    "train.activation_checkpointing": Rule("choice", choices=AC_MODES),
    "train.compile": Rule("choice", choices=COMPILE_MODES),
    "train.reduce_dtype": Rule("choice", choices=("fp32", "bf16")),
    "train.loss_scale_growth_interval": _int(1, MAX_STEPS),
    "measure.profile_steps": _int(0, MAX_STEPS),
    "measure.repeats": _int(1, 1000),
    "measure.count_calls": Rule("bool"),
    "measure.peak_tflops": Rule("float", 0, 1e9, what=_PEAK.format("1e9 (TFLOP/s)")),
    "measure.target_ci": _float(0, 1),
    "measure.min_timed_steps": _int(1, MAX_STEPS),
    "checkpoint.dir": Rule("str"),
    "checkpoint.every": _int(0, MAX_STEPS),  # 0: never
    "checkpoint.keep": _int(1, 10**6),
    "checkpoint.resume": Rule("bool"),
    "debug.fail_at_step": _int(-1, MAX_STEPS),  # -1: never
    "debug.nan_at_step": _int(-1, MAX_STEPS),
    "debug.dump_params": Rule("str"),
    "debug.overflow_at_step": _int(-1, MAX_STEPS),
    "debug.comm_delay_ms": Rule("float", 0, 10_000, what="a number of milliseconds in [0, 10000]"),
    "data.kind": Rule("choice", choices=DATA_KINDS),
    "data.path": Rule("str"),
    "data.dtype": Rule("choice", choices=TOKEN_DTYPES),
    "device": Rule("choice", choices=DEVICES),
    "peak_flops": Rule("float", 0, 1e21, what=_PEAK.format("1e21 (FLOP/s)")),
    "out": Rule("str"),
    "progress": Rule("str"),
}
# betas are exclusive at 1 (Adam divides by 1 - beta**t); the table's ranges are inclusive
_BETA_MAX = 1 - 1e-12


def flatten(cfg: RunConfig) -> dict[str, Any]:
    """Every leaf of ``cfg`` by dotted key, e.g. ``{"train.lr": 3e-4, ...}``."""
    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                out[prefix + f.name] = value

    walk(cfg, "")
    return out


def check_run_values(cfg: RunConfig) -> None:
    """Each setting of ``cfg`` against its rule (types, finiteness, ranges)."""
    values = flatten(cfg)
    check_all(values, RUN_RULES)
    betas = values["train.betas"]
    if any(b > _BETA_MAX for b in betas):
        raise ConfigError(
            f"`train.betas` must be {RUN_RULES['train.betas'].describe()}, but got "
            f"train.betas={shown(betas)}."
        )
