"""Model factories for ``model=custom`` tests (``model.factory=tests.engine.factories:NAME``)."""

from __future__ import annotations

import torch
from torch import nn

from engine.config import ModelConfig


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(self.norm(x))))


class TinyLM(nn.Module):
    """Embedding, a causal mixing of the previous token, MLP blocks, head: (B, T) -> logits."""

    def __init__(self, vocab: int, d: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.emb, self.prev = nn.Embedding(vocab, d), nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        shifted = torch.nn.functional.pad(tokens, (1, 0))[:, :-1]  # (B, T): the token before
        x = self.emb(tokens) + self.prev(shifted)
        for block in self.blocks:
            x = block(x)
        return self.head(x)  # (B, T, vocab)


def tiny_lm(model: ModelConfig) -> TinyLM:
    return TinyLM(model.vocab_size)


def with_units() -> dict:
    lm = TinyLM(256)
    return {"model": lm, "units": list(lm.blocks)}


def broken(model: ModelConfig) -> nn.Module:
    raise ValueError(f"no model for vocab {model.vocab_size}")


def not_a_module() -> str:
    return "a string"


def unknown_keys() -> dict:
    return {"model": TinyLM(256), "tp_plna": {}}


def broken_for_seed_1(model: ModelConfig) -> nn.Module:
    """A user's bug that only some trials of a sweep hit (torch is seeded with train.seed)."""
    if torch.initial_seed() == 1:
        raise ValueError(f"no model for vocab {model.vocab_size} with seed 1")
    return TinyLM(model.vocab_size)
