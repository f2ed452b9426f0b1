from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig
from engine.model import GPT, count_params, initial_value
from tests.engine.presets import preset

# the presets users run (conf/model), so the published counts below also check their shapes
GPT2_SMALL = preset("gpt2-small")
LLAMA_7B = preset("llama-7b")


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
    # GPT-2 small is 124,439,808 with the head tied to the token embedding; ours is untied,
    # and its vocabulary is padded from 50,257 to 50,304 rows (in the table and the head)
    counts = count_params(GPT2_SMALL)
    untied_head = GPT2_SMALL.vocab_size * GPT2_SMALL.d_model
    assert counts["vocab_padding"] == 2 * (50_304 - 50_257) * 768
    assert counts["total"] - counts["vocab_padding"] - untied_head == 124_439_808
    assert counts["total"] == counts["embedding"] + counts["non_embedding"] + 2 * 47 * 768
    assert count_params(LLAMA_7B)["total"] == 6_738_415_616  # LLaMA-7B (Touvron et al. 2023)
    assert count_params(LLAMA_7B)["vocab_padding"] == 0  # 32,000 = 250 x 128


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
    torch.manual_seed(123)  # the global random stream plays no part
    models = [GPT(cfg, seed=seed) for seed in (0, 0, 1)]
    a, b, c = (dict(m.named_parameters()) for m in models)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert any(not torch.equal(a[n], c[n]) for n in a if a[n].dim() > 1)


def test_initial_weights_depend_on_the_name_not_the_order():
    """Two parameters of the same shape and rule get different values, and a parameter's value
    is the same whether or not the parameters before it were initialised."""
    cfg = ModelConfig()
    model = GPT(cfg, seed=0)
    wq, wk = model.layers["0"].attn.wq.weight, model.layers["0"].attn.wk.weight
    assert not torch.equal(wq, wk)
    alone = initial_value(cfg, "layers.0.attn.wk.weight", wk.shape, seed=0)
    torch.testing.assert_close(alone, wk, rtol=0, atol=0)
    # GPT-2's scaled init of the residual projections
    down = model.layers["3"].mlp.down.weight
    assert down.std().item() == pytest.approx(0.02 / (2 * cfg.n_layers) ** 0.5, rel=0.05)
    assert (
        model.layers["3"].mlp_norm.weight.eq(1).all() and model.layers["3"].mlp.up.bias.eq(0).all()
    )


def test_padded_vocabulary_rows():
    cfg = ModelConfig(vocab_size=257)  # an odd vocabulary, padded to 384 rows
    assert cfg.padded_vocab_size == 384
    model = GPT(cfg)
    assert model.tok_emb.weight.shape == (384, 128) and model.head.weight.shape == (384, 128)
    assert sum(p.numel() for p in model.parameters()) == count_params(cfg)["total"]
    logits = model(torch.randint(257, (2, 8)))
    assert logits.shape == (2, 8, 384)


def test_initial_loss_is_near_uniform():
    """GPT-2 init gives near-uniform predictions: loss ~ ln(vocab) at step 0."""
    torch.manual_seed(0)
    cfg = ModelConfig()
    tokens = torch.randint(cfg.vocab_size, (4, cfg.seq_len + 1))
    logits = GPT(cfg)(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    assert abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.1
