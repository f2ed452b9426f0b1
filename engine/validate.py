"""Checks a RunConfig in pure Python, before any process starts.

Each failure is a ``ConfigError`` naming the key, the value and what would be valid.
``validate_values`` checks each setting alone (every choice of a search space must pass it);
``validate_layout`` checks settings against each other (a sweep prunes a layout that fails).
"""

from __future__ import annotations

import dataclasses
import math

from engine.config import (
    DEVICES,
    MLP_TYPES,
    NORM_TYPES,
    POSITIONS,
    PRECISIONS,
    ConfigError,
    RunConfig,
)
from engine.parallel.activation import MODES as AC_MODES
from engine.parallel.pipeline import SCHEDULES, stages_per_rank

ZERO_STAGES = (0, 1, 2, 3)
# schedules that refuse fewer micro-batches than this many stages (total or per rank group)
_MIN_MICRO = {"1f1b": "pp", "dualpipev": "stages"}


def _positive(key: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"`{key}` must be a positive integer, but got {key}={value!r}.")


def _one_of(key: str, value: object, valid: tuple) -> None:
    if value not in valid:
        raise ConfigError(f"`{key}` must be one of {list(valid)}, but got {key}={value!r}.")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def validate_model(cfg: RunConfig) -> None:
    m = cfg.model
    keys = ("n_layers", "n_heads", "d_model", "d_ff", "vocab_size", "vocab_pad_multiple", "seq_len")
    for key in keys:
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
    for key in ("tp", "pp", "pp_virtual_stages"):
        _positive(f"parallel.{key}", getattr(p, key))
    for key in ("dp", "world_size"):  # 0 has a meaning for these (derive / not fixed)
        value = getattr(p, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"`parallel.{key}` must be an integer >= 0, but got {value!r}.")
    _one_of("parallel.zero", p.zero, ZERO_STAGES)
    _one_of("parallel.pp_schedule", p.pp_schedule, tuple(SCHEDULES))
    if p.ddp_bucket_mb <= 0:
        raise ConfigError(f"`parallel.ddp_bucket_mb` must be > 0, but got {p.ddp_bucket_mb}.")


def validate_train(cfg: RunConfig) -> None:
    t = cfg.train
    _positive("train.micro_batch", t.micro_batch)
    _positive("train.global_batch", t.global_batch)
    _positive("train.steps", t.steps)
    _one_of("train.precision", t.precision, PRECISIONS)
    _one_of("train.activation_checkpointing", t.activation_checkpointing, AC_MODES)
    _one_of("train.reduce_dtype", t.reduce_dtype, ("fp32", "bf16"))
    _positive("train.loss_scale_growth_interval", t.loss_scale_growth_interval)
    if not isinstance(t.warmup_steps, int) or t.warmup_steps < 0:
        raise ConfigError(f"`train.warmup_steps` must be >= 0, but got {t.warmup_steps!r}.")
    if t.grad_clip < 0:
        raise ConfigError(f"`train.grad_clip` must be >= 0, but got train.grad_clip={t.grad_clip}.")
    if not isinstance(cfg.measure.profile_steps, int) or cfg.measure.profile_steps < 0:
        raise ConfigError(
            f"`measure.profile_steps` must be >= 0, but got {cfg.measure.profile_steps!r}."
        )
    _positive("measure.repeats", cfg.measure.repeats)
    if t.lr <= 0:
        raise ConfigError(f"`train.lr` must be > 0, but got train.lr={t.lr}.")


def validate_checkpoint(cfg: RunConfig) -> None:
    c = cfg.checkpoint
    if c.every < 0 or c.keep < 1:
        raise ConfigError(
            f"`checkpoint.every` must be >= 0 and `checkpoint.keep` >= 1, but got "
            f"checkpoint.every={c.every}, checkpoint.keep={c.keep}."
        )
    if (c.every or c.resume) and not c.dir:
        raise ConfigError(
            "`checkpoint.every` / `checkpoint.resume` need `checkpoint.dir`, but it is empty; "
            "set checkpoint.dir=PATH."
        )


def validate_values(cfg: RunConfig) -> None:
    """Checks of each setting on its own (a search space's choices must all pass these)."""
    validate_checkpoint(cfg)
    validate_model(cfg)
    validate_parallel(cfg)
    validate_train(cfg)
    _one_of("device", cfg.device, DEVICES)
    delay = cfg.debug.comm_delay_ms
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= 10_000:
        raise ConfigError(
            f"`debug.comm_delay_ms` must be a number of milliseconds in [0, 10000], but got "
            f"debug.comm_delay_ms={delay!r}."
        )
    if (delay or cfg.measure.count_calls) and cfg.device == "cuda":
        key = "debug.comm_delay_ms" if delay else "measure.count_calls"
        raise ConfigError(
            f"`{key}` wraps gloo process groups and works on CPU only, but device=cuda; "
            "set device=cpu or leave it unset."
        )
    validate_peak(cfg)


def validate_peak(cfg: RunConfig) -> None:
    """The MFU peak override: a finite number > 0, or 0 for "look up / measure"."""
    tflops, flops = cfg.measure.peak_tflops, cfg.peak_flops
    for key, value in (("measure.peak_tflops", tflops), ("peak_flops", flops)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise ConfigError(
                f"`{key}` must be a finite number > 0 (or 0: the datasheet table on GPUs, a "
                f"measured matmul on CPUs), but got {key}={value!r}."
            )
    if tflops and flops and not math.isclose(tflops * 1e12, flops, rel_tol=1e-6):
        raise ConfigError(
            f"`measure.peak_tflops` and `peak_flops` (FLOP/s) disagree: measure.peak_tflops="
            f"{tflops} is {tflops * 1e12:.4g} FLOP/s, but peak_flops={flops:.4g}; set only "
            "measure.peak_tflops."
        )


def resolve(cfg: RunConfig) -> RunConfig:
    """Fill in derived settings: ``parallel.dp=0`` becomes world_size / (tp * pp)."""
    p = cfg.parallel
    if p.dp != 0:
        return cfg
    if p.world_size == 0:
        raise ConfigError(
            "`parallel.dp=0` derives dp from `parallel.world_size`, but parallel.world_size=0; "
            "set parallel.world_size or a positive parallel.dp."
        )
    if p.world_size % (p.tp * p.pp):
        raise ConfigError(
            f"parallel.tp * parallel.pp = {p.tp * p.pp} does not divide parallel.world_size="
            f"{p.world_size}; valid tp * pp: {_divisors(p.world_size)}."
        )
    parallel = dataclasses.replace(p, dp=p.world_size // (p.tp * p.pp))
    return dataclasses.replace(cfg, parallel=parallel)


def _check_batch(cfg: RunConfig) -> None:
    t, dp = cfg.train, cfg.parallel.dp
    if t.global_batch % (t.micro_batch * dp):
        valid = [mb for mb in _divisors(t.global_batch) if t.global_batch % (mb * dp) == 0]
        raise ConfigError(
            "`train.global_batch` must be divisible by train.micro_batch * parallel.dp, but got "
            f"train.global_batch={t.global_batch}, train.micro_batch={t.micro_batch}, "
            f"parallel.dp={dp}; valid train.micro_batch at this dp: "
            f"{valid or 'none (global_batch must be a multiple of parallel.dp)'}."
        )
    if t.steps <= t.warmup_steps:
        raise ConfigError(
            "`train.steps` must exceed `train.warmup_steps` (at least one measured step), but got "
            f"train.steps={t.steps}, train.warmup_steps={t.warmup_steps}."
        )


def _check_tensor(cfg: RunConfig) -> None:
    p, m = cfg.parallel, cfg.model
    if p.sp and p.tp == 1:
        raise ConfigError(
            "`parallel.sp=true` splits the activations of a tensor-parallel group, but "
            "parallel.tp=1; set parallel.tp > 1 or parallel.sp=false."
        )
    if p.tp == 1:
        return
    # the embedding and head split the padded vocabulary, so that is what tp must divide
    vocab_key = (
        f"the padded vocabulary (model.vocab_size={m.vocab_size} rounded up to a multiple of "
        f"model.vocab_pad_multiple={m.vocab_pad_multiple})"
    )
    sizes = {"model.n_heads": m.n_heads, "model.d_ff": m.d_ff, vocab_key: m.padded_vocab_size}
    if p.sp:
        sizes["model.seq_len"] = m.seq_len
    for key, size in sizes.items():
        if size % p.tp:
            valid = [d for d in _divisors(math.gcd(*sizes.values())) if d <= 64]
            hint = ""
            if key == vocab_key:
                hint = (
                    f"; or set model.vocab_pad_multiple to a multiple of {p.tp} (e.g. "
                    f"{math.lcm(m.vocab_pad_multiple, p.tp)})"
                )
            own = [d for d in _divisors(size) if d <= 64]
            raise ConfigError(
                f"`parallel.tp`={p.tp} must divide {key}={size} (each rank takes an equal share; "
                f"its divisors up to 64: {own}); valid parallel.tp for this model: {valid}{hint}."
            )


def _check_pipeline(cfg: RunConfig) -> None:
    p, t = cfg.parallel, cfg.train
    placement = SCHEDULES[p.pp_schedule].placement
    if p.pp == 1:
        if p.pp_virtual_stages > 1:
            raise ConfigError(
                f"`parallel.pp_virtual_stages`={p.pp_virtual_stages} has no effect with "
                "parallel.pp=1; set parallel.pp > 1 or parallel.pp_virtual_stages=1."
            )
        return
    looped = [k for k, s in SCHEDULES.items() if s.placement == "loop"]
    if placement == "single" and p.pp_virtual_stages > 1:
        raise ConfigError(
            f"`parallel.pp_virtual_stages`={p.pp_virtual_stages} needs a schedule with several "
            f"stages per rank, but parallel.pp_schedule={p.pp_schedule}; valid: {looped}."
        )
    if placement == "v" and p.pp_virtual_stages not in (1, 2):
        raise ConfigError(
            f"parallel.pp_schedule={p.pp_schedule} places exactly 2 stages per rank (V shape); "
            f"`parallel.pp_virtual_stages` must be 1 or 2, got {p.pp_virtual_stages}."
        )
    n_stages = p.pp * stages_per_rank(p.pp_schedule, p.pp_virtual_stages)
    if n_stages > cfg.model.n_layers:
        raise ConfigError(
            f"{n_stages} pipeline stages (parallel.pp={p.pp} x {n_stages // p.pp} per rank) "
            f"need at least one layer each, but model.n_layers={cfg.model.n_layers}."
        )
    n_micro = t.global_batch // (p.dp * t.micro_batch)
    need = {"pp": p.pp, "stages": n_stages}.get(_MIN_MICRO.get(p.pp_schedule, ""), 1)
    if n_micro < need:
        raise ConfigError(
            f"parallel.pp_schedule={p.pp_schedule} needs at least {need} micro-batches per step, "
            f"but train.global_batch / (parallel.dp * train.micro_batch) = {t.global_batch} / "
            f"({p.dp} * {t.micro_batch}) = {n_micro}; lower train.micro_batch or raise "
            "train.global_batch."
        )


def _check_combinations(cfg: RunConfig) -> None:
    p, t = cfg.parallel, cfg.train
    if p.zero > 0 and p.dp == 1:
        raise ConfigError(
            f"`parallel.zero`={p.zero} shards over data-parallel ranks and has no effect with "
            "parallel.dp=1; set parallel.dp > 1 or parallel.zero=0."
        )
    if p.zero == 1 and (p.tp > 1 or p.pp > 1):
        raise ConfigError(
            "`parallel.zero=1` uses DDP + ZeroRedundancyOptimizer, which PyTorch cannot combine "
            f"with tensor parallelism (DTensor parameters) or pipeline schedules (got "
            f"parallel.tp={p.tp}, parallel.pp={p.pp}); valid: parallel.zero 0, 2 or 3."
        )
    if t.reduce_dtype != "fp32" and p.dp == 1:
        raise ConfigError(
            f"`train.reduce_dtype`={t.reduce_dtype} sets the data-parallel gradient reduction, "
            "which does not happen with parallel.dp=1; set parallel.dp > 1 or reduce_dtype=fp32."
        )
    if (cfg.debug.comm_delay_ms or cfg.measure.count_calls) and p.n_ranks == 1:
        key = "debug.comm_delay_ms" if cfg.debug.comm_delay_ms else "measure.count_calls"
        raise ConfigError(
            f"`{key}` acts on collectives, and a single process has none; run more than one "
            "rank (parallel.dp, tp or pp > 1) or leave it unset."
        )
    if p.world_size and p.n_ranks != p.world_size:
        raise ConfigError(
            f"parallel.dp * parallel.tp * parallel.pp = {p.dp} * {p.tp} * {p.pp} = {p.n_ranks}, "
            f"but parallel.world_size={p.world_size}; set parallel.dp=0 to derive dp from it."
        )


def validate_layout(cfg: RunConfig) -> None:
    """Checks of settings against each other: a sweep prunes a layout that fails them."""
    _check_combinations(cfg)
    _check_batch(cfg)
    _check_tensor(cfg)
    _check_pipeline(cfg)


def validate(cfg: RunConfig) -> RunConfig:
    """Resolve derived settings, raise ConfigError for the first invalid one, return the result."""
    validate_values(cfg)
    cfg = resolve(cfg)
    validate_layout(cfg)
    return cfg
