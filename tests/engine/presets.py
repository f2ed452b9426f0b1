"""The model presets of conf/model as ModelConfig, read without Hydra (engine tests use torch
and the standard library only)."""

from __future__ import annotations

from engine.config import ModelConfig
from tests.helpers import REPO


def preset(name: str) -> ModelConfig:
    """conf/model/NAME.yaml: flat ``key: value`` lines with optional comments."""
    values: dict = {}
    for line in (REPO / "conf" / "model" / f"{name}.yaml").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        key, value = (x.strip() for x in line.split(":", 1))
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        values[key] = {"true": True, "false": False}.get(value, value)
    return ModelConfig(**values)
