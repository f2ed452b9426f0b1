"""``model=hf``: a transformers causal language model, built from its configuration alone
(``AutoModelForCausalLM.from_config``, random weights seeded by ``train.seed``; nothing is
downloaded), laid out like the built-in GPT from outside:

- pipeline: consecutive decoder layers per stage (``engine.stages.split_layers``, the GPT's
  balance), the embedding on the first stage, the final norm and the head on the last;
- tensor parallelism: the model's own plan (transformers' ``_tp_plan``: q/k/v, gate and up
  column-wise, o and down row-wise, the head column-wise with gathered logits), else a plan of
  ours by the same module names;
- FSDP2 units and activation checkpointing: one decoder layer each.

Every layout builds the whole model from the same seed and keeps its part, so each starts
from the single-process weights; parameter names are transformers' own (``model.layers.3.
mlp.up_proj.weight``) whatever the layout, so checkpoints move between layouts.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from engine.config import ModelConfig, RunConfig
from engine.hf_shape import read_config, require_transformers
from engine.recipe import Initialise, Units, token_cross_entropy
from engine.stages import split_layers

# transformers' tensor-parallel style names -> torch's ParallelStyle (a plain torch style:
# the gathered head gives every rank the whole logits, so the loss is the reference's)
STYLES = {
    "colwise": lambda: ColwiseParallel(),
    "rowwise": lambda: RowwiseParallel(),
    "colwise_gather_output": lambda: ColwiseParallel(output_layouts=Replicate()),
    "colwise_rep": lambda: ColwiseParallel(output_layouts=Replicate()),
    "embedding_rowwise": lambda: RowwiseParallel(input_layouts=Replicate()),
}
# ours, for a model without a plan: the Llama family's module names
FALLBACK_PLAN = {
    **{f"model.layers.*.self_attn.{p}": "colwise" for p in ("q_proj", "k_proj", "v_proj")},
    "model.layers.*.self_attn.o_proj": "rowwise",
    **{f"model.layers.*.mlp.{p}": "colwise" for p in ("gate_proj", "up_proj")},
    "model.layers.*.mlp.down_proj": "rowwise",
    "lm_head": "colwise_gather_output",
}


def build(model_config: ModelConfig, *, seed: int) -> nn.Module:
    """The whole model, fp32, its weights a function of ``seed``."""
    require_transformers()
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = dict(read_config(model_config.hf_config))
    hf_cfg = AutoConfig.for_model(raw.pop("model_type"), **raw)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32)


class _Body(nn.Module):
    """The decoder's parts on this stage, under transformers' names (``model.*``)."""

    def __init__(self, decoder: nn.Module, layers: list[int], *, first: bool, last: bool):
        super().__init__()
        self.embed_tokens = decoder.embed_tokens if first else None
        self.layers = nn.ModuleDict({str(i): decoder.layers[i] for i in layers})
        self.norm = decoder.norm if last else None
        self.rotary_emb = copy.deepcopy(decoder.rotary_emb)  # buffers only; one per stage


class HFStage(nn.Module):
    """Pipeline stage: token ids (first) or hidden states (B, T, d) in; logits (B, T, vocab)
    (last) or hidden states out. The whole model is the one stage that is first and last."""

    def __init__(self, full: nn.Module, layers: list[int], *, first: bool, last: bool) -> None:
        super().__init__()
        self.model = _Body(full.model, layers, first=first, last=last)
        self.lm_head = full.lm_head if last else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.model
        h = body.embed_tokens(x) if body.embed_tokens is not None else x  # (B, T, d)
        positions = torch.arange(h.shape[1], device=h.device).unsqueeze(0)  # (1, T)
        rotary = body.rotary_emb(h, positions)  # (cos, sin)
        for layer in body.layers.values():
            # no mask: transformers' attention is then causal over the whole sequence
            h = layer(h, attention_mask=None, position_ids=positions, position_embeddings=rotary)
            h = h[0] if isinstance(h, tuple) else h
        if self.lm_head is None:
            return h
        return self.lm_head(body.norm(h))  # (B, T, vocab)


def tp_plan(full: nn.Module) -> dict[str, str]:
    """The model's own tensor-parallel plan (names relative to the CausalLM), else ours."""
    return dict(getattr(full, "_tp_plan", None) or FALLBACK_PLAN)


def part_plan(part: nn.Module, plan: dict[str, str]) -> dict:
    """``plan``'s entries that name modules of ``part``, as torch ParallelStyles."""
    names = [name for name, _ in part.named_modules()]
    out = {}
    for key, style in plan.items():
        if not any(fnmatch.fnmatchcase(n, key) for n in names):
            continue  # on another pipeline stage
        if style not in STYLES:
            raise NotImplementedError(
                f"tensor-parallel style {style!r} of {key} (transformers' plan) has no torch "
                f"equivalent here; known: {sorted(STYLES)}"
            )
        out[key] = STYLES[style]()
    return out


class HFRecipe:
    """engine.recipe's questions answered for a transformers model."""

    def __init__(self, model_config: ModelConfig, *, seed: int) -> None:
        self.model_config, self.seed = model_config, seed
        self._full: nn.Module | None = None

    def full(self) -> nn.Module:
        if self._full is None:  # built once per rank; each stage takes its layers from it
            self._full = build(self.model_config, seed=self.seed)
        return self._full

    def part(self, stage: int, n_stages: int) -> nn.Module:
        n = self.model_config.n_layers
        layers = (
            list(range(n)) if n_stages == 1 else split_layers(self.model_config, n_stages)[stage]
        )
        return HFStage(self.full(), layers, first=stage == 0, last=stage == n_stages - 1)

    def prepare(self, part: nn.Module, device: torch.device) -> Initialise:
        part.to(device)  # real weights already: the layouts shard them from here
        return lambda wrapped: None

    def tensor_parallel(self, part: nn.Module, mesh: DeviceMesh, *, sequence_parallel: bool):
        assert not sequence_parallel, "engine.hf_shape.check_hf_layout refuses parallel.sp"
        parallelize_module(part, mesh, part_plan(part, tp_plan(self.full())))

    def blocks(self, part: nn.Module) -> Units:
        return [(part.model.layers, name) for name in part.model.layers]

    def loss(self, output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return token_cross_entropy(output, targets)

    def loss_context(self, tp: int) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


def hf_recipe(cfg: RunConfig) -> HFRecipe:
    return HFRecipe(cfg.model, seed=cfg.train.seed)
