"""Fuzzed command-line overrides: each is refused in one line naming the key, or is valid.

Overrides are generated from the config schema (every key of the engine's and the tuner's
sections) with hostile values, and go through what the command line does before it launches
anything: compose and check (``load``), validate the run, build the search space and create the
sampler. Nothing is launched in-process; a few real CLI calls check the exit status and output.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import pytest

from engine.config import AC_MODES, PP_SCHEDULES, ConfigError, RunConfig
from engine.validate import validate
from engine.validate_values import RUN_RULES, flatten
from tests.helpers import cli
from tuner import space as space_mod
from tuner.config import TUNER_RULES, check_sampler, load, run_keys
from tuner.schema import TUNER_SECTIONS, schema_keys

VALUES = {
    "wrong type": ["abc", "[1,2]", "{a: 1}", "true", "null", "[]", "'1.5'"],
    "non-finite": ["nan", "inf", "-inf", "1e400", "-1e400", "NaN"],
    "huge or negative": ["-1", "0", "-0.0", "9223372036854775808", "1e30", "-1e30", "2.5"],
    "strings": ["''", "'" + "x" * 300 + "'", "' '", "'a\tb'"],
    "unicode": ["'名前'", "'é'", "'\u202e'", "'\U0001f600'"],
    "shell": ["'$(id)'", "'a;b'", "'`x`'", "'a|b'", "'../..'", "'/'", "'a b'", "'*'"],
    "interpolation": [
        "'${oc.env:HOME}'",
        "'${oc.env:PARATUNE_NO_SUCH_VAR}'",
        "'${train.steps}'",
        "'${nope}'",
        "'${oc.decode:\"[1\"}'",
    ],
    "grammar": ["[", "]", "'", "a=b=c", "${"],
}
SAMPLER_KEYS = ["sampler.seed", "sampler.n_startup_trials"]


def override_keys() -> list[str]:
    """Every dotted key a user can override, from the typed schema."""
    keys = list(run_keys())
    for section in TUNER_SECTIONS:  # the free-form ones (space, sampler) have no keys here
        keys += [f"{section}.{k}" for k in schema_keys(section)]
    return keys + SAMPLER_KEYS


def cases(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    pool = [(k, kind, v) for k in override_keys() for kind, vs in VALUES.items() for v in vs]
    return rng.sample(pool, n)


def before_launch(overrides: list[str]) -> Any:
    """What `python -m tuner sweep` does with the overrides before its first launch."""
    cfg = load(overrides)
    validate(cfg.run)
    remaining, _ = space_mod.fixed_by_command_line(cfg.space, cfg.overrides)
    if remaining:
        space_mod.build(remaining, cfg.run)
    check_sampler(cfg)
    return cfg


def _floats(obj: Any) -> list[float]:
    if isinstance(obj, float):
        return [obj]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _floats(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _floats(v)]
    if dataclasses.is_dataclass(obj):
        return _floats(dataclasses.asdict(obj))
    return []


def test_every_key_has_a_rule():
    assert set(RUN_RULES) == set(flatten(RunConfig()))
    tuner_keys = {k for k in override_keys() if k.split(".")[0] in TUNER_SECTIONS}
    tuner_keys -= set(SAMPLER_KEYS)
    assert tuner_keys - set(TUNER_RULES) == {"sweep.objectives"}  # checked by name


def test_torch_free_constants_match_the_engine():
    from engine.parallel.activation import MODES
    from engine.parallel.pipeline import SCHEDULES

    assert {k: s.placement for k, s in SCHEDULES.items()} == PP_SCHEDULES
    assert tuple(MODES) == AC_MODES


@pytest.mark.parametrize("chunk", range(4))
def test_fuzzed_overrides_are_refused_in_one_line_or_valid(chunk):
    accepted = []
    for key, kind, value in cases(300)[chunk::4]:
        override = f"{key}={value}"
        try:
            cfg = before_launch([override])
        except ConfigError as err:
            message = str(err)
            assert "\n" not in message, (override, message)
            assert message.strip() and len(message) < 2000, (override, message)
            continue
        # accepted: every number in the config is finite, and the value was checked by a rule
        assert all(math.isfinite(x) for x in _floats([cfg.run, cfg.sweep, cfg.launcher]))
        assert all(math.isfinite(x) for x in _floats(cfg.sampler))
        accepted.append((key, kind, value))
    # what may pass: a valid number (or text that converts to one, or an interpolation that
    # resolves to one), or any text in a text field (names, paths, URLs) that its rule accepts
    rules = {**RUN_RULES, **TUNER_RULES}
    for key, kind, value in accepted:
        text = key in rules and rules[key].kind == "str"
        assert text or kind in ("huge or negative", "interpolation", "wrong type"), (key, value)


def test_each_chaos_value_is_refused_naming_the_key():
    chaos = [
        "train.lr=nan",
        "train.grad_clip=nan",
        "parallel.ddp_bucket_mb=nan",
        "model.init_std=-1",
        "model.init_std=inf",
        "train.betas=[]",
        "train.weight_decay=-1",
        "train.weight_decay=1e400",
        "model.norm_eps=-1",
        "model.vocab_size=1000000000000",
        "train.seed=-1",
        "sampler.n_startup_trials=-1",
        "sampler.seed=-1",
        "launcher.timeout_s=nan",
        "parallel.sp=9223372036854775808",
        "sweep.name=" + "n" * 300,
        "model.init_std='${oc.env:HOME}'",
        "measure.peak_tflops=inf",
    ]
    for override in chaos:
        key = override.split("=")[0]
        with pytest.raises(ConfigError) as err:
            before_launch([override])
        assert "\n" not in str(err.value) and key in str(err.value), (override, str(err.value))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "train.lr=nan"], ["train.lr", "nan", "finite"]),
        (["sweep", "sampler.seed=-1"], ["sampler.seed", "-1"]),
        (["run", "model.init_std=${oc.env:HOME}"], ["model.init_std"]),
        (["sweep", "sweep.name=$(touch pwned)"], ["sweep.name"]),
        (["run", "parallel.sp=9223372036854775808"], ["parallel.sp", "true or false"]),
    ],
)
def test_cli_prints_one_line_and_launches_nothing(tmp_path, args, words):
    proc = cli(*args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == [], "nothing is written or launched"
