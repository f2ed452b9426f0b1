"""Checks a RunConfig in pure Python, before any process starts.

Each failure is a ``ConfigError`` naming the key, the value and what would be valid.
``validate_values`` checks each setting alone (every choice of a search space must pass it);
``validate_layout`` checks settings against each other (a sweep prunes a layout that fails).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import math
import re

from engine.config import (
    PP_SCHEDULE_CLASSES,
    PP_SCHEDULE_SINCE,
    PP_SCHEDULES,
    ConfigError,
    RunConfig,
)
from engine.hf_shape import check_hf_layout, resolve_hf
from engine.token_file import check_tokens
from engine.validate_compile import check_compile
from engine.validate_values import check_run_values

# Only torch-free modules above (numpy is fine): the CLI validates a config before (and
# without) importing torch.

# schedules that refuse fewer micro-batches than this many stages (total or per rank group)
_MIN_MICRO = {"1f1b": "pp", "dualpipev": "stages"}
# schedules that split a layer's backward into an input-gradient and a weight-gradient pass
SPLIT_BACKWARD = ("interleaved_zero_bubble", "zbv_zero_bubble", "dualpipev")


def stages_per_rank(schedule: str, virtual_stages: int) -> int:
    return {"single": 1, "loop": virtual_stages, "v": 2}[PP_SCHEDULES[schedule]]


@functools.cache
def installed_torch() -> str | None:
    """The installed torch's version, read from its package metadata without importing it
    (None where torch is not installed)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(version: str) -> tuple[int, int]:
    """(major, minor) of a version such as "2.9.0+cu128" or "2.10.0a0"."""
    major, minor = re.match(r"(\d+)\.(\d+)", version).groups()
    return int(major), int(minor)


def schedules_in_torch(version: str | None) -> list[str]:
    """The pipeline schedules torch ``version`` has (every one when the version is unknown)."""
    return list(_schedules_in(version))


@functools.cache  # a fixed table against one version string: checked for every layout
def _schedules_in(version: str | None) -> tuple[str, ...]:
    have = _release(version) if version else None
    return tuple(k for k, v in PP_SCHEDULE_SINCE.items() if have is None or _release(v) <= have)


def missing_schedule(schedule: str, version: str | None) -> ConfigError:
    """The error for a pipeline schedule the installed torch lacks."""
    return ConfigError(
        f"parallel.pp_schedule={schedule} needs torch >= {PP_SCHEDULE_SINCE[schedule]} (the "
        f"first with torch.distributed.pipelining.{PP_SCHEDULE_CLASSES[schedule]}), but torch "
        f"{version} is installed; valid here: {schedules_in_torch(version)}, or upgrade torch."
    )


def _divisors(n: int) -> list[int]:
    return list(_divisor_tuple(n))


@functools.cache  # error messages of a plan's many layouts ask for the same few numbers
def _divisor_tuple(n: int) -> tuple[int, ...]:
    return tuple(d for d in range(1, n + 1) if n % d == 0)


_SOURCE_KEYS = {"hf": "hf_config", "custom": "factory"}  # model.source -> the key it reads


def validate_source(cfg: RunConfig) -> None:
    m = cfg.model
    for source, key in _SOURCE_KEYS.items():
        value = getattr(m, key)
        if m.source == source and not value:
            raise ConfigError(f"model={source} needs `model.{key}`, but it is empty.")
        if m.source != source and value:
            raise ConfigError(
                f"`model.{key}`={value} is read only with model={source}, but model.source="
                f"{m.source}; select model={source} or leave model.{key} unset."
            )
    if m.source != "hf" and m.n_kv_heads not in (0, m.n_heads):
        raise ConfigError(
            f"`model.n_kv_heads`={m.n_kv_heads}: grouped-query attention is read from a "
            "transformers configuration (model=hf); the built-in GPT has model.n_heads."
        )


def validate_model(cfg: RunConfig) -> None:
    m = cfg.model
    if m.n_kv_heads and m.n_heads % m.n_kv_heads:
        raise ConfigError(
            f"`model.n_heads`={m.n_heads} must be a multiple of `model.n_kv_heads`="
            f"{m.n_kv_heads} (query heads share key/value heads in equal groups)."
        )
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
    check_run_values(cfg)  # type, finiteness and range of every key (engine/validate_values.py)
    validate_checkpoint(cfg)
    validate_source(cfg)
    validate_model(cfg)
    delay = cfg.debug.comm_delay_ms
    if (delay or cfg.measure.count_calls) and cfg.device == "cuda":
        key = "debug.comm_delay_ms" if delay else "measure.count_calls"
        raise ConfigError(
            f"`{key}` wraps gloo process groups and works on CPU only, but device=cuda; "
            "set device=cpu or leave it unset."
        )
    validate_peak(cfg)


def validate_peak(cfg: RunConfig) -> None:
    """The MFU peak override: a finite number > 0, or 0 for "look up / measure"."""
    tflops, flops = cfg.measure.peak_tflops, cfg.peak_flops  # each checked by its rule
    if tflops and flops and not math.isclose(tflops * 1e12, flops, rel_tol=1e-6):
        raise ConfigError(
            f"`measure.peak_tflops` and `peak_flops` (FLOP/s) disagree: measure.peak_tflops="
            f"{tflops} is {tflops * 1e12:.4g} FLOP/s, but peak_flops={flops:.4g}; set only "
            "measure.peak_tflops."
        )


def resolve_sources(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the shape of a transformers configuration read in (``model=hf``), its
    token file (``data=tokens``) checked against the vocabulary that results."""
    if cfg.model.source == "hf":
        cfg = dataclasses.replace(cfg, model=resolve_hf(cfg.model))
        validate_model(cfg)
    check_tokens(cfg.data, vocab_size=cfg.model.vocab_size, seq_len=cfg.model.seq_len)
    return cfg


def resolve(cfg: RunConfig) -> RunConfig:
    """Fill in derived settings: a transformers configuration's shape (``model=hf``), and
    ``parallel.dp=0`` as world_size / (tp * pp)."""
    cfg = resolve_sources(cfg)
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


def _check_tensor(cfg: RunConfig, *, model_shape: bool) -> None:
    p, m = cfg.parallel, cfg.model
    if p.sp and p.tp == 1:
        raise ConfigError(
            "`parallel.sp=true` splits the activations of a tensor-parallel group, but "
            "parallel.tp=1; set parallel.tp > 1 or parallel.sp=false."
        )
    if p.tp == 1 or not model_shape:
        return
    # the embedding and head split the padded vocabulary, so that is what tp must divide
    vocab_key = (
        f"the padded vocabulary (model.vocab_size={m.vocab_size} rounded up to a multiple of "
        f"model.vocab_pad_multiple={m.vocab_pad_multiple})"
    )
    sizes = {"model.n_heads": m.n_heads, "model.d_ff": m.d_ff, vocab_key: m.padded_vocab_size}
    if m.n_kv_heads:
        sizes["model.n_kv_heads"] = m.n_kv_heads
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


def _check_pipeline(cfg: RunConfig, *, model_shape: bool) -> None:
    p, t = cfg.parallel, cfg.train
    placement = PP_SCHEDULES[p.pp_schedule]
    if p.pp == 1:
        if p.pp_virtual_stages > 1:
            raise ConfigError(
                f"`parallel.pp_virtual_stages`={p.pp_virtual_stages} has no effect with "
                "parallel.pp=1; set parallel.pp > 1 or parallel.pp_virtual_stages=1."
            )
        return
    if p.pp_schedule not in _schedules_in(installed_torch()):
        raise missing_schedule(p.pp_schedule, installed_torch())
    looped = [k for k, v in PP_SCHEDULES.items() if v == "loop"]
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
    if model_shape and n_stages > cfg.model.n_layers:
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
    if p.fsdp_unit_layers != 1 and p.zero < 2:
        raise ConfigError(
            f"`parallel.fsdp_unit_layers`={p.fsdp_unit_layers} groups FSDP2's units and has no "
            f"effect with parallel.zero={p.zero}; set parallel.zero 2 or 3, or "
            "parallel.fsdp_unit_layers=1."
        )
    if p.zero == 1 and (p.tp > 1 or p.pp > 1):
        raise ConfigError(
            "`parallel.zero=1` uses DDP + ZeroRedundancyOptimizer, which PyTorch cannot combine "
            f"with tensor parallelism (DTensor parameters) or pipeline schedules (got "
            f"parallel.tp={p.tp}, parallel.pp={p.pp}); valid: parallel.zero 0, 2 or 3."
        )
    if p.zero == 3 and p.dp > 1 and p.pp > 1 and p.pp_schedule in SPLIT_BACKWARD:
        # FSDP reshards after the input-gradient pass; the weight pass that follows leaves
        # parameters without gradients, so they would silently never train
        raise ConfigError(
            f"`parallel.pp_schedule`={p.pp_schedule} computes weight gradients in a separate "
            "pass, after parallel.zero=3 has resharded the parameters, and some never get "
            "gradients; valid with this schedule: parallel.zero 0 or 2, or with zero 3: "
            "gpipe, 1f1b, interleaved_1f1b or looped_bfs."
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


def validate_layout(cfg: RunConfig, *, model_shape: bool | None = None) -> None:
    """Checks of settings against each other: a sweep prunes a layout that fails them.
    ``model_shape=False``: leave out the checks against the GPT's shape (``cfg.model``), for
    a model the engine does not build itself (``engine.recipe.ModuleRecipe``); None: whether
    the config describes the model's shape (``ModelConfig.shape_known``)."""
    if model_shape is None:
        model_shape = cfg.model.shape_known
    _check_combinations(cfg)
    _check_batch(cfg)
    if cfg.model.source == "hf":
        check_hf_layout(cfg)
    _check_tensor(cfg, model_shape=model_shape)
    _check_pipeline(cfg, model_shape=model_shape)
    check_compile(cfg)


def validate(cfg: RunConfig, *, model_shape: bool | None = None) -> RunConfig:
    """Resolve derived settings, raise ConfigError for the first invalid one, return the result."""
    validate_values(cfg)
    cfg = resolve(cfg)
    validate_layout(cfg, model_shape=model_shape)
    return cfg
