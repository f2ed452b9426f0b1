"""Training tokens, sharded over data-parallel ranks: seeded synthetic sequences, or windows of
a token file.

Every sequence is a function of (seed, global sample index) alone, so the global batch of a step
is the same whatever the data-parallel degree or micro-batch size: a layout run and the
single-process reference see identical data, and a resumed run continues with the very
sequences it would have seen. Synthetic sequences are a random segment repeated to fill the
context, so the second half is predictable from the first (an induction task) and the loss
falls visibly over a short run instead of sitting at log(vocab). A token file (``data=tokens``)
gives sample ``index`` the window at an offset drawn from (seed, index).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from engine.config import RunConfig
from engine.token_file import open_tokens


class _Samples:
    """Batches from ``sample(index)``; subclasses have ``seq_len``, ``seed``, ``global_batch``."""

    seq_len: int
    global_batch: int

    def sample(self, index: int) -> torch.Tensor:
        """Sequence number ``index`` of the whole run: (seq_len + 1,) int64 tokens."""
        raise NotImplementedError

    def shard(self, step: int, *, dp_rank: int, dp: int) -> torch.Tensor:
        """This data-parallel rank's rows of the step's global batch: (global_batch/dp, T + 1)."""
        per_rank = self.global_batch // dp
        first = step * self.global_batch + dp_rank * per_rank
        return torch.stack([self.sample(first + i) for i in range(per_rank)])

    def micro_batches(
        self, step: int, *, dp_rank: int, dp: int, micro_batch: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets) pairs of shape (micro_batch, T) that make up this rank's shard."""
        rows = self.shard(step, dp_rank=dp_rank, dp=dp)
        return [(mb[:, :-1], mb[:, 1:]) for mb in rows.split(micro_batch)]


@dataclass(frozen=True)
class SyntheticTokens(_Samples):
    vocab_size: int
    seq_len: int
    seed: int
    global_batch: int

    def sample(self, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        period = max(1, (self.seq_len + 1) // 2)
        segment = torch.randint(self.vocab_size, (period,), generator=g)
        reps = -(-(self.seq_len + 1) // period)
        return segment.repeat(reps)[: self.seq_len + 1]


@dataclass(frozen=True)
class TokenFile(_Samples):
    """Windows of seq_len + 1 ids of a token file (engine/token_file.py checked it)."""

    seq_len: int
    seed: int
    global_batch: int
    path: str
    dtype: str = "uint16"
    ids: np.memmap = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", open_tokens(self.path, self.dtype))

    def sample(self, index: int) -> torch.Tensor:
        starts = len(self.ids) - self.seq_len  # windows of seq_len + 1 ids that fit
        offset = int(np.random.default_rng((self.seed, index)).integers(starts))
        window = np.asarray(self.ids[offset : offset + self.seq_len + 1], dtype=np.int64)
        return torch.from_numpy(window)


def training_tokens(cfg: RunConfig) -> _Samples:
    """The run's data (``data.kind``)."""
    m, t, d = cfg.model, cfg.train, cfg.data
    if d.kind == "tokens":
        return TokenFile(m.seq_len, t.seed, t.global_batch, path=d.path, dtype=d.dtype)
    return SyntheticTokens(m.vocab_size, m.seq_len, t.seed, t.global_batch)
