"""The winning layout in the terms of the frameworks people train with: a DeepSpeed config
(JSON) and a torchtitan job config (TOML).

Each function returns the framework's settings and the list of what does not carry over, one
sentence each: a setting of the run the framework cannot express, or expresses only
approximately, is said, never dropped silently. What the mapping rests on:

DeepSpeed (the JSON passed to ``deepspeed.initialize``):
  dp × ZeRO stage  -> ``zero_optimization.stage`` (same stages, the ZeRO paper's); the data-
                      parallel degree is the world size over tp × pp, not a setting
  tp               -> ``tensor_parallel.autotp_size`` (AutoTP training; ZeRO stages 0-2 only)
  pp, schedule     -> not in the JSON: ``deepspeed.pipe.PipelineModule(num_stages=pp)`` in code,
                      with DeepSpeed's own 1F1B-style schedule
  micro-batch      -> ``train_micro_batch_size_per_gpu``; global batch -> ``train_batch_size``;
                      ``gradient_accumulation_steps`` = global / (micro × dp)
  precision        -> ``bf16.enabled`` / ``fp16`` with dynamic loss scaling (``loss_scale`` 0,
                      ``loss_scale_window`` = train.loss_scale_growth_interval)
  reduce dtype     -> ``communication_data_type``
  optimizer        -> ``optimizer`` AdamW with lr, betas, weight decay; grad clip ->
                      ``gradient_clipping``
  activation ckpt  -> not in the JSON: ``deepspeed.checkpointing.checkpoint`` in the model code

torchtitan (the TOML of ``--job.config_file``; the sections and keys of the ``JobConfig``
dataclasses in torchtitan's ``torchtitan/config/job_config.py``: [training], [parallelism],
[activation_checkpoint], [optimizer]; a key typed ``Literal`` takes only the values it lists):
  dp with ZeRO-3   -> ``data_parallel_shard_degree`` = dp (FSDP2 shards parameters, gradients
                      and optimizer state); ZeRO-2 -> the same with ``fsdp_reshard_after_forward
                      = "never"``; ZeRO-0 (DDP) -> ``data_parallel_replicate_degree`` = dp;
                      ZeRO-1 has no torchtitan equivalent (nearest: ZeRO-2, said in the notes)
  tp               -> ``tensor_parallel_degree`` (torchtitan's TP always shards norms along the
                      sequence: SP on; a run without SP differs there)
  pp, schedule     -> ``pipeline_parallel_degree``, ``pipeline_parallel_schedule`` (the names
                      torch.distributed.pipelining's ``get_schedule_class`` takes: the class
                      names without "Schedule"), ``pipeline_parallel_layers_per_stage`` for
                      virtual stages
  micro-batch      -> without pp: ``local_batch_size`` = micro, ``global_batch_size`` = global
                      (torchtitan accumulates); with pp: ``local_batch_size`` = global / dp,
                      ``pipeline_parallel_microbatch_size`` = micro
  precision        -> ``mixed_precision_param``: "bfloat16" | "float32" only (through FSDP2's
                      policy when sharded, through autocast under pure DDP — as here); fp16 has
                      no setting there (nearest: bfloat16, said in the notes)
  reduce dtype     -> ``mixed_precision_reduce``: "float32" only (a bf16 reduction is said)
  AC               -> ``[activation_checkpoint] mode`` none | full | selective; this engine's
                      selective is op-level, torchtitan's ``selective_ac_option = "op"``
  optimizer        -> ``name`` AdamW, ``lr``, ``beta1``, ``beta2``, ``eps``, ``weight_decay``;
                      grad clip -> ``[training] max_norm``
"""

from __future__ import annotations

from typing import Any

from engine.config import PP_SCHEDULE_CLASSES, RunConfig
from engine.validate import resolve


def _common_notes(cfg: RunConfig) -> list[str]:
    m = cfg.model
    return [
        f"The model ({m.name}: {m.n_layers} layers, d_model {m.d_model}, {m.n_heads} heads, "
        f"d_ff {m.d_ff}, {m.mlp} MLP, {m.norm}, {m.position} positions, seq_len {m.seq_len}) is "
        "not part of this file: build or choose the same architecture in your training code."
    ]


def deepspeed_config(cfg: RunConfig) -> tuple[dict[str, Any], list[str]]:
    """The DeepSpeed config of ``cfg`` and what it does not express."""
    cfg = resolve(cfg)
    p, t = cfg.parallel, cfg.train
    notes = _common_notes(cfg)
    out: dict[str, Any] = {
        "train_batch_size": t.global_batch,
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.global_batch // (t.micro_batch * p.dp),
        "zero_optimization": {"stage": p.zero},
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": t.lr, "betas": list(t.betas), "weight_decay": t.weight_decay},
        },
        "communication_data_type": t.reduce_dtype,
    }
    if t.grad_clip > 0:
        out["gradient_clipping"] = t.grad_clip
    if t.precision == "bf16":
        out["bf16"] = {"enabled": True}
    elif t.precision == "fp16":
        out["fp16"] = {
            "enabled": True,
            "loss_scale": 0,  # 0: dynamic
            "loss_scale_window": t.loss_scale_growth_interval,
        }
    if p.tp > 1:
        out["tensor_parallel"] = {"autotp_size": p.tp}
        if p.zero == 3:
            notes.append(
                "tensor_parallel (AutoTP) works with ZeRO stages 0-2: ZeRO-3 with tp > 1 is "
                "not a DeepSpeed layout; lower the stage or drop tp."
            )
        if p.sp:
            notes.append(
                "Sequence parallelism inside tensor parallelism (Megatron-style) is not a "
                "DeepSpeed config setting; AutoTP runs without it."
            )
    if p.pp > 1:
        notes.append(
            f"Pipeline parallelism is set in code, not in this file: wrap the model in "
            f"deepspeed.pipe.PipelineModule(num_stages={p.pp}); DeepSpeed uses its own "
            f"1F1B-style schedule, not {p.pp_schedule}"
            + (f" with {p.pp_virtual_stages} virtual stages" if p.pp_virtual_stages > 1 else "")
            + "."
        )
    if t.activation_checkpointing != "none":
        notes.append(
            f"Activation checkpointing ({t.activation_checkpointing}) is applied in the model "
            "code (deepspeed.checkpointing.checkpoint around the blocks), not by this file."
        )
    notes.append(
        f"ddp_bucket_mb={p.ddp_bucket_mb:g} not mapped: DeepSpeed's reduce_bucket_size counts "
        "elements, not bytes, and its default suits it."
    )
    return out, notes


def torchtitan_config(cfg: RunConfig) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The torchtitan job config of ``cfg`` (section -> settings) and what it does not say."""
    cfg = resolve(cfg)
    p, t = cfg.parallel, cfg.train
    notes = _common_notes(cfg)
    par: dict[str, Any] = {
        "data_parallel_replicate_degree": p.dp if p.zero == 0 else 1,
        "data_parallel_shard_degree": 1 if p.zero == 0 else p.dp,
        "tensor_parallel_degree": p.tp,
        "pipeline_parallel_degree": p.pp,
    }
    if p.zero in (1, 2):
        par["fsdp_reshard_after_forward"] = "never"
    if p.zero == 1:
        notes.append(
            "ZeRO-1 (only optimizer state sharded) has no torchtitan setting; this file uses "
            "FSDP2 without resharding after forward, which is ZeRO-2 (gradients sharded too)."
        )
    if p.tp > 1 and not p.sp:
        notes.append(
            "torchtitan's tensor parallelism always shards norms along the sequence "
            "(sequence parallelism on); this run had it off."
        )
    training: dict[str, Any] = {
        "global_batch_size": t.global_batch,
        "seq_len": cfg.model.seq_len,
        "steps": t.steps,
        # torchtitan's Literal types: param bfloat16 | float32, reduce float32 only
        "mixed_precision_param": "float32" if t.precision == "fp32" else "bfloat16",
        "mixed_precision_reduce": "float32",
    }
    if t.reduce_dtype != "fp32":
        notes.append(
            f"The gradients were reduced in {t.reduce_dtype}; torchtitan's "
            "mixed_precision_reduce takes float32 only, so this file reduces in float32."
        )
    if t.grad_clip > 0:
        training["max_norm"] = t.grad_clip
    else:
        notes.append(
            "This run did not clip gradients (train.grad_clip=0); torchtitan always clips at "
            "training.max_norm: set it high to match."
        )
    if p.pp > 1:
        training["local_batch_size"] = t.global_batch // p.dp
        par["pipeline_parallel_schedule"] = PP_SCHEDULE_CLASSES[p.pp_schedule].removeprefix(
            "Schedule"
        )
        par["pipeline_parallel_microbatch_size"] = t.micro_batch
        if p.pp_virtual_stages > 1:
            notes.append(
                f"{p.pp_virtual_stages} stages per rank: set torchtitan's "
                f"pipeline_parallel_layers_per_stage so that the model splits into "
                f"{p.pp * p.pp_virtual_stages} stages."
            )
    else:
        training["local_batch_size"] = t.micro_batch
    if t.precision == "fp16":
        notes.append(
            "fp16 with dynamic loss scaling has no torchtitan setting (mixed_precision_param "
            "takes bfloat16 or float32): this file says bfloat16, the nearest."
        )
    ac: dict[str, Any] = {"mode": t.activation_checkpointing}
    if t.activation_checkpointing == "selective":
        # this engine's selective policy is op-level (keeps matmul and attention outputs)
        ac["selective_ac_option"] = "op"
        notes.append(
            "Selective checkpointing maps to torchtitan's op-level policy, which keeps the "
            "outputs of every other matmul rather than of all of them: its memory and "
            "recomputation differ from this run's."
        )
    sections = {
        "training": training,
        "parallelism": par,
        "activation_checkpoint": ac,
        # eps is left to the defaults, which agree (1e-8 in torch's AdamW and in torchtitan)
        "optimizer": {
            "name": "AdamW",
            "lr": t.lr,
            "beta1": t.betas[0],
            "beta2": t.betas[1],
            "weight_decay": t.weight_decay,
        },
    }
    return sections, notes


def to_toml(sections: dict[str, dict[str, Any]], *, header: str = "") -> str:
    """Flat TOML sections of strings, numbers and booleans (all this mapping writes)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"# {line}" for line in header.splitlines()]
    for name, items in sections.items():
        lines += ["", f"[{name}]", *(f"{k} = {value(v)}" for k, v in items.items())]
    return "\n".join(lines).lstrip("\n") + "\n"
