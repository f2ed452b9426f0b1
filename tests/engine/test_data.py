from __future__ import annotations

import pytest
import torch

from engine.data import SyntheticTokens


def test_deterministic_for_seed_and_step():
    a = SyntheticTokens(256, 64, seed=3, global_batch=8)
    b = SyntheticTokens(256, 64, seed=3, global_batch=8)
    c = SyntheticTokens(256, 64, seed=4, global_batch=8)
    assert torch.equal(a.shard(5, dp_rank=0, dp=1), b.shard(5, dp_rank=0, dp=1))
    assert not torch.equal(a.shard(5, dp_rank=0, dp=1), c.shard(5, dp_rank=0, dp=1))
    assert not torch.equal(a.shard(5, dp_rank=0, dp=1), a.shard(6, dp_rank=0, dp=1))


@pytest.mark.parametrize("dp", [2, 4])
def test_data_parallel_shards_partition_the_global_batch(dp):
    data = SyntheticTokens(256, 32, seed=0, global_batch=8)
    whole = data.shard(2, dp_rank=0, dp=1)
    shards = [data.shard(2, dp_rank=r, dp=dp) for r in range(dp)]
    assert all(s.shape == (8 // dp, 33) for s in shards)
    assert torch.equal(torch.cat(shards), whole)


def test_micro_batches_split_the_shard_into_inputs_and_shifted_targets():
    data = SyntheticTokens(256, 32, seed=0, global_batch=8)
    shard = data.shard(0, dp_rank=1, dp=2)
    micro = data.micro_batches(0, dp_rank=1, dp=2, micro_batch=2)
    assert len(micro) == 2
    assert torch.equal(torch.cat([x for x, _ in micro]), shard[:, :-1])
    assert torch.equal(torch.cat([y for _, y in micro]), shard[:, 1:])


def test_tokens_are_in_vocab_and_second_half_repeats_first():
    seq = SyntheticTokens(100, 64, seed=1, global_batch=1).sample(7)
    assert seq.shape == (65,) and int(seq.min()) >= 0 and int(seq.max()) < 100
    assert torch.equal(seq[32:64], seq[:32])  # predictable half: the loss can fall
