"""paratune's training engine: a GPT-style model trained across ranks, measured as it runs.

Depends on torch and the standard library only. The names below are imported on first use
(PEP 562), so that ``import engine.config`` or ``engine.validate`` — all the command line needs
to check a config — does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "GPT": "engine.model",
    "count_params": "engine.model",
    "ConfigError": "engine.config",
    "DebugConfig": "engine.config",
    "MeasureConfig": "engine.config",
    "ModelConfig": "engine.config",
    "ParallelConfig": "engine.config",
    "RunConfig": "engine.config",
    "TrainConfig": "engine.config",
    "Engine": "engine.api",
    "EngineConfig": "engine.api",
    "run": "engine.runner",
    "validate": "engine.validate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return list(__all__)
