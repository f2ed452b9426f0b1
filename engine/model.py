"""GPT-style decoder: architecture only, no parallel code (parallelism wraps it from outside).

GPT-2 shape by default (LayerNorm, GELU MLP, learned positions, biases); the llama-like presets
switch to RMSNorm, SwiGLU and rotary positions. The output head is not tied to the token
embedding, so pipeline stages can own them separately.

Initial weights are a function of (seed, parameter name) alone (``initial_value``), not of the
order in which parameters draw from one random stream: a model built on the meta device and
materialised shard by shard, or one pipeline stage of it, gets exactly the values the whole
model built in one process gets.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.shapes import count_params as count_params  # re-exported: formulas live there


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        out = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.d_model, cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


def rope_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Rotation angles (T, hs/2) of RoFormer (Su et al. 2021)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    return torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    # x: (B, nh, T, hs); rotate consecutive pairs of channels by position-dependent angles
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = angles.cos(), angles.sin()  # (T, hs/2)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.head_dim = cfg.d_model // cfg.n_heads
        # separate q/k/v projections so tensor parallelism can shard each column-wise
        self.wq = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.wk = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.wv = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        # view(B, T, -1, hs) rather than n_heads: under TP a rank holds only its share of heads
        q = self.wq(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.wk(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, rope[:T]), apply_rope(k, rope[:T])
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias) if self.swiglu else None
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, rope: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope)
        return x + self.mlp(self.mlp_norm(x))


def _name_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed from the run's seed and a parameter's name (stable across
    processes and Python versions, unlike ``hash``)."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def initial_value(cfg: ModelConfig, name: str, shape: torch.Size, *, seed: int) -> torch.Tensor:
    """The full initial fp32 value of parameter ``name`` (its name in the whole GPT), on the CPU.

    GPT-2 init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * n_layers); norm
    weights 1, biases 0. Each parameter draws from its own generator, seeded by its name.
    """
    if len(shape) == 1:
        return torch.full(shape, 1.0 if name.endswith("norm.weight") else 0.0)
    std = cfg.init_std
    if name.endswith(("wo.weight", "down.weight")):
        std = std / math.sqrt(2 * cfg.n_layers)
    generator = torch.Generator().manual_seed(_name_seed(seed, name))
    return torch.empty(shape).normal_(0.0, std, generator=generator)


class GPT(nn.Module):
    """Token ids (B, T) -> logits (B, T, padded_vocab).

    Layers live in a ModuleDict keyed by their global index, so a pipeline stage can delete the
    layers it does not own and keep the names (and checkpoints) of the rest; ``tok_emb``,
    ``norm`` and ``head`` may be set to None on stages that do not hold them.

    The embedding and head have ``cfg.padded_vocab_size`` rows. The padded logits stay in the
    softmax (as in Megatron-LM): no target ever names them, so training pushes them down, and
    at initialisation they add ln(padded / vocab) to the loss (+0.0009 nats for GPT-2's
    vocabulary). Masking them to -inf would need one more operation on vocabulary-sharded
    logits under tensor parallelism; every layout and the single-process reference share the
    same padding, so losses stay comparable either way.

    Built under ``torch.device("meta")`` it allocates nothing and initialises nothing:
    ``engine.weights.materialize`` fills in this rank's shard later.
    """

    def __init__(self, cfg: ModelConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        vocab = cfg.padded_vocab_size
        self.tok_emb = nn.Embedding(vocab, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.position == "learned" else None
        self.layers = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.n_layers)})
        self.norm = make_norm(cfg)
        self.head = nn.Linear(cfg.d_model, vocab, bias=False)
        if cfg.position == "rope":
            self.register_buffer(
                "rope", rope_tables(cfg.seq_len, cfg.d_model // cfg.n_heads), persistent=False
            )
        else:
            self.rope = None
        if not self.head.weight.is_meta:
            self.reset_parameters(seed=seed)

    @torch.no_grad()
    def reset_parameters(self, *, seed: int = 0) -> None:
        """Every parameter to ``initial_value`` (plain, unsharded parameters only)."""
        for name, p in self.named_parameters():
            p.copy_(initial_value(self.cfg, name, p.shape, seed=seed))

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Recompute the rotary table (after ``to_empty`` left it uninitialised)."""
        if self.rope is not None:
            head_dim = self.cfg.d_model // self.cfg.n_heads
            self.rope.copy_(rope_tables(self.cfg.seq_len, head_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(tokens) if self.tok_emb is not None else tokens  # (B, T, C)
        if self.pos_emb is not None and self.tok_emb is not None:
            x = x + self.pos_emb(torch.arange(tokens.shape[1], device=tokens.device))
        for layer in self.layers.values():
            x = layer(x, self.rope)
        if self.norm is not None:
            x = self.norm(x)
        return self.head(x) if self.head is not None else x  # (B, T, vocab)
