"""Hydra's and OmegaConf's errors about the user's input, as one actionable line each.

Their own messages span several lines, nest the cause, and name neither the valid keys nor the
valid values; these functions check the overrides as typed and rewrite the errors into
ConfigErrors that name the key, the value and what is valid.
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from engine.config import ConfigError
from engine.validate_values import Rule, check, shown
from tuner.schema import schema_keys, schema_node


def check_overrides(overrides: list[str]) -> None:
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
                f"cannot parse the override {shown(text)}: {one_line(err)}; write KEY=VALUE, "
                "and quote a value with spaces or special characters (e.g. 'KEY=\"a b\"')."
            ) from None
        if override.is_delete() or not isinstance(schema_node(override.key_or_group), bool):
            continue
        value = override.value()
        if not isinstance(value, bool) and not _is_interpolation(value):
            check(override.key_or_group, value, Rule("bool"))


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("${")


def one_line(err: BaseException) -> str:
    lines = (ln.strip() for ln in str(err).splitlines())
    return " ".join(ln for ln in lines if ln and not ln.startswith("See https://"))


_TYPE_HINTS = {
    "Integer": "an integer",
    "Float": "a number",
    "not a valid bool": "true or false",
    "to string": "a single value, not a list",
}


def explain(err: Exception) -> str:
    """One actionable line from Hydra's and OmegaConf's (often multi-line, nested) errors."""
    inner: Any = err
    while inner.__cause__ is not None:
        inner = inner.__cause__
    key = getattr(inner, "full_key", "") or ""
    lines = [ln.strip() for ln in str(inner).splitlines() if ln.strip()]
    head = lines[0] if lines else type(inner).__name__
    if "not in" in head and key:
        parent = key.rpartition(".")[0]
        valid = schema_keys(parent)
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
    return one_line(inner)
