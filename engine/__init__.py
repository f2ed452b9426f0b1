"""paratune's training engine: a GPT-style model trained across ranks, measured as it runs.

Depends on torch and the standard library only.
"""

from engine.api import Engine, EngineConfig
from engine.config import (
    ConfigError,
    DebugConfig,
    MeasureConfig,
    ModelConfig,
    ParallelConfig,
    RunConfig,
    TrainConfig,
)
from engine.model import GPT, count_params
from engine.runner import run
from engine.validate import validate

__all__ = [
    "GPT",
    "ConfigError",
    "DebugConfig",
    "Engine",
    "EngineConfig",
    "MeasureConfig",
    "ModelConfig",
    "ParallelConfig",
    "RunConfig",
    "TrainConfig",
    "count_params",
    "run",
    "validate",
]
