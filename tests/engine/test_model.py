from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig
from engine.model import GPT, count_params

GPT2_SMALL = ModelConfig(
    name="gpt2-small",
    n_layers=12,
    n_heads=12,
    d_model=768,
    d_ff=3072,
    vocab_size=50257,
    seq_len=1024,
)
LLAMA_7B = ModelConfig(
    name="llama-7b",
    n_layers=32,
    n_heads=32,
    d_model=4096,
    d_ff=11008,
    vocab_size=32000,
    seq_len=2048,
    mlp="swiglu",
    norm="rmsnorm",
    position="rope",
    bias=False,
)


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(),
        ModelConfig(mlp="swiglu", norm="rmsnorm", position="rope", bias=False),
        GPT2_SMALL,
        LLAMA_7B,
    ],
    ids=["tiny", "tiny-llama", "gpt2-small", "llama-7b"],
)
def test_analytic_param_count_matches_module(cfg):
    with torch.device("meta"):  # shapes only: no memory for the 7B model
        model = GPT(cfg)
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg)["total"]


def test_param_counts_match_published_models():
    # GPT-2 small is 124,439,808 with the head tied to the token embedding; ours is untied
    untied_head = GPT2_SMALL.vocab_size * GPT2_SMALL.d_model
    assert count_params(GPT2_SMALL)["total"] - untied_head == 124_439_808
    assert count_params(LLAMA_7B)["total"] == 6_738_415_616  # LLaMA-7B (Touvron et al. 2023)


def test_logits_shape_and_causality():
    torch.manual_seed(0)
    cfg = ModelConfig()
    model = GPT(cfg).eval()
    tokens = torch.randint(cfg.vocab_size, (2, cfg.seq_len))
    logits = model(tokens)
    assert logits.shape == (2, cfg.seq_len, cfg.vocab_size)
    changed = tokens.clone()
    changed[:, 40] = (changed[:, 40] + 1) % cfg.vocab_size
    other = model(changed)
    torch.testing.assert_close(logits[:, :40], other[:, :40])  # the past ignores the future
    assert not torch.allclose(logits[:, 40:], other[:, 40:])


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_same_seed_same_model(position):
    cfg = ModelConfig(position=position)
    models = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        models.append(GPT(cfg))
    a, b, c = (dict(m.named_parameters()) for m in models)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert any(not torch.equal(a[n], c[n]) for n in a if a[n].dim() > 1)


def test_initial_loss_is_near_uniform():
    """GPT-2 init gives near-uniform predictions: loss ~ ln(vocab) at step 0."""
    torch.manual_seed(0)
    cfg = ModelConfig()
    tokens = torch.randint(cfg.vocab_size, (4, cfg.seq_len + 1))
    logits = GPT(cfg)(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    assert abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.1
