"""Seeded synthetic token data, sharded over data-parallel ranks.

Every sequence is a function of (seed, global sample index) alone, so the global batch of a step
is the same whatever the data-parallel degree or micro-batch size: a layout run and the
single-process reference see identical data. Each sequence is a random segment repeated to fill
the context, so the second half is predictable from the first (an induction task) and the loss
falls visibly over a short run instead of sitting at log(vocab).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SyntheticTokens:
    vocab_size: int
    seq_len: int
    seed: int
    global_batch: int

    def sample(self, index: int) -> torch.Tensor:
        """Sequence number ``index`` of the whole run: (seq_len + 1,) int64 tokens."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        period = max(1, (self.seq_len + 1) // 2)
        segment = torch.randint(self.vocab_size, (period,), generator=g)
        reps = -(-(self.seq_len + 1) // period)
        return segment.repeat(reps)[: self.seq_len + 1]

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
