from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig
from engine.metrics.flops import flops_per_token, hardware_flops_per_token, measure_cpu_peak
from engine.model import count_params


def test_flops_per_token_follows_palm():
    cfg = ModelConfig()
    n = count_params(cfg)["non_embedding"]
    # attention term: 12 * layers * heads * head_dim * seq_len
    assert flops_per_token(cfg) == 6 * n + 12 * 4 * 4 * 32 * 64
    # N excludes the token and position tables but keeps the output head
    assert n == count_params(cfg)["total"] - 256 * 128 - 64 * 128


def test_full_recomputation_adds_the_blocks_forward_to_hardware_flops():
    cfg = ModelConfig()
    model = flops_per_token(cfg)
    head = 6 * 256 * 128  # the output head is not recomputed
    assert hardware_flops_per_token(cfg, "none") == model
    assert hardware_flops_per_token(cfg, "selective") == model
    # forward is 1/3 of the 6N + 12LHQT of the blocks
    assert hardware_flops_per_token(cfg, "full") == pytest.approx(model + (model - head) / 3)


def test_measured_cpu_peak_bounds_a_real_matmul():
    peak = measure_cpu_peak(1, torch.float32, size=256, repeats=3)
    assert 1e8 < peak < 1e13  # a CPU core: between 0.1 GFLOP/s and 10 TFLOP/s
