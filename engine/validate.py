"""Checks a RunConfig in pure Python, before any process starts.

Each failure is a ``ConfigError`` naming the key, the value and what would be valid.
"""

from __future__ import annotations

from engine.config import (
    DEVICES,
    MLP_TYPES,
    NORM_TYPES,
    POSITIONS,
    PRECISIONS,
    ConfigError,
    RunConfig,
)

# Layouts the engine can run today; the others are refused rather than silently changed.
SUPPORTED_TP = (1,)
SUPPORTED_PP = (1,)
SUPPORTED_ZERO = (0,)


def _positive(key: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"`{key}` must be a positive integer, but got {key}={value!r}.")


def _one_of(key: str, value: object, valid: tuple) -> None:
    if value not in valid:
        raise ConfigError(f"`{key}` must be one of {list(valid)}, but got {key}={value!r}.")


def validate_model(cfg: RunConfig) -> None:
    m = cfg.model
    for key in ("n_layers", "n_heads", "d_model", "d_ff", "vocab_size", "seq_len"):
        _positive(f"model.{key}", getattr(m, key))
    _one_of("model.mlp", m.mlp, MLP_TYPES)
    _one_of("model.norm", m.norm, NORM_TYPES)
    _one_of("model.position", m.position, POSITIONS)
    if m.d_model % m.n_heads:
        raise ConfigError(
            f"`model.d_model` must be divisible by `model.n_heads`, but got "
            f"model.d_model={m.d_model}, model.n_heads={m.n_heads}."
        )
    if m.position == "rope" and (m.d_model // m.n_heads) % 2:
        raise ConfigError(
            f"rotary positions need an even head size, but model.d_model / model.n_heads = "
            f"{m.d_model // m.n_heads}."
        )


def validate_parallel(cfg: RunConfig) -> None:
    p = cfg.parallel
    for key in ("dp", "tp", "pp"):
        _positive(f"parallel.{key}", getattr(p, key))
    _one_of("parallel.tp", p.tp, SUPPORTED_TP)
    _one_of("parallel.pp", p.pp, SUPPORTED_PP)
    _one_of("parallel.zero", p.zero, SUPPORTED_ZERO)
    if p.ddp_bucket_mb <= 0:
        raise ConfigError(f"`parallel.ddp_bucket_mb` must be > 0, but got {p.ddp_bucket_mb}.")


def validate_train(cfg: RunConfig) -> None:
    t = cfg.train
    _positive("train.micro_batch", t.micro_batch)
    _positive("train.global_batch", t.global_batch)
    _positive("train.steps", t.steps)
    _one_of("train.precision", t.precision, PRECISIONS)
    if not isinstance(t.warmup_steps, int) or t.warmup_steps < 0:
        raise ConfigError(f"`train.warmup_steps` must be >= 0, but got {t.warmup_steps!r}.")
    if t.grad_clip < 0:
        raise ConfigError(f"`train.grad_clip` must be >= 0, but got train.grad_clip={t.grad_clip}.")
    if not isinstance(cfg.measure.profile_steps, int) or cfg.measure.profile_steps < 0:
        raise ConfigError(
            f"`measure.profile_steps` must be >= 0, but got {cfg.measure.profile_steps!r}."
        )
    if t.lr <= 0:
        raise ConfigError(f"`train.lr` must be > 0, but got train.lr={t.lr}.")


def validate_values(cfg: RunConfig) -> None:
    """Checks of each setting on its own (a search space's choices must all pass these)."""
    validate_model(cfg)
    validate_parallel(cfg)
    validate_train(cfg)
    _one_of("device", cfg.device, DEVICES)
    if cfg.peak_flops < 0:
        raise ConfigError(f"`peak_flops` must be >= 0, but got peak_flops={cfg.peak_flops}.")


def validate_layout(cfg: RunConfig) -> None:
    """Checks of settings against each other: a sweep prunes a layout that fails them."""
    t, dp = cfg.train, cfg.parallel.dp
    if t.global_batch % (t.micro_batch * dp):
        valid = [
            mb for mb in range(1, t.global_batch + 1) if t.global_batch % (mb * dp) == 0
        ] or "none: global_batch must be a multiple of parallel.dp"
        raise ConfigError(
            "`train.global_batch` must be divisible by train.micro_batch * parallel.dp, but got "
            f"train.global_batch={t.global_batch}, train.micro_batch={t.micro_batch}, "
            f"parallel.dp={dp}; valid train.micro_batch at this dp: {valid}."
        )
    if t.steps <= t.warmup_steps:
        raise ConfigError(
            "`train.steps` must exceed `train.warmup_steps` (at least one measured step), but got "
            f"train.steps={t.steps}, train.warmup_steps={t.warmup_steps}."
        )


def validate(cfg: RunConfig) -> RunConfig:
    """Raise ConfigError for the first invalid setting; return ``cfg`` unchanged when valid."""
    validate_values(cfg)
    validate_layout(cfg)
    return cfg
