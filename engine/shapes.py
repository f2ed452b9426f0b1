"""Parameter counts from a model's shape alone, in plain Python (no torch): what the FLOPs,
memory and communication formulas and the planner need, checked against the module in tests.
"""

from __future__ import annotations

from engine.config import ModelConfig


def _norm_params(cfg: ModelConfig) -> int:
    return cfg.d_model * (2 if cfg.norm == "layernorm" and cfg.bias else 1)


def kv_width(cfg: ModelConfig) -> int:
    """Width of the key and value projections: d_model, or less with grouped-query attention
    (Ainslie et al. 2023), where n_kv_heads heads of keys and values serve all query heads."""
    return cfg.d_model * cfg.kv_heads // cfg.n_heads


def _attention_params(cfg: ModelConfig, b: int) -> int:
    d, kv = cfg.d_model, kv_width(cfg)
    return 2 * (d * d + b * d) + 2 * (d * kv + b * kv)  # q and output; k and v


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Analytic parameter counts, independent of the module code (checked against it in tests).

    ``total``: every parameter the module holds, padded vocabulary rows included (what memory
    and communication move). ``embedding``: the token table's real rows and the position
    table, which do no matmul work. ``non_embedding``: the blocks, final norm and the head's
    real rows: MFU's N, so model FLOPs count the real vocabulary (the padded rows are an
    implementation choice that does no useful work; see engine.metrics.flops).
    ``vocab_padding``: the padded rows of the token table and the head.
    total = embedding + non_embedding + vocab_padding.
    """
    d, f, L = cfg.d_model, cfg.d_ff, cfg.n_layers
    b = 1 if cfg.bias else 0
    norm = _norm_params(cfg)
    attn = _attention_params(cfg, b)
    n_mats = 3 if cfg.mlp == "swiglu" else 2
    mlp = (n_mats - 1) * (d * f + b * f) + (f * d + b * d)
    embedding = cfg.vocab_size * d + (cfg.seq_len * d if cfg.position == "learned" else 0)
    blocks = L * (2 * norm + attn + mlp)
    head = cfg.vocab_size * d
    padding = 2 * (cfg.padded_vocab_size - cfg.vocab_size) * d
    non_embedding = blocks + norm + head
    return {
        "total": embedding + non_embedding + padding,
        "embedding": embedding,
        "non_embedding": non_embedding,
        "vocab_padding": padding,
    }


def block_params(cfg: ModelConfig, tp: int = 1) -> int:
    """Parameters of one block held by one tensor-parallel rank: column-parallel q/k/v and
    up (and gate) with their biases, and the row-parallel output and down weights, split by
    ``tp``; the row-parallel biases and the norms are replicated."""
    d, f, b, kv = cfg.d_model, cfg.d_ff, 1 if cfg.bias else 0, kv_width(cfg)
    col = (
        (d * d + b * d)
        + 2 * (d * kv + b * kv)
        + (2 if cfg.mlp == "swiglu" else 1) * (d * f + b * f)
    )
    row = d * d + f * d
    return (col + row) // tp + 2 * b * d + 2 * _norm_params(cfg)


def stage_params(cfg: ModelConfig, tp: int, *, layers: int, first: bool, last: bool) -> int:
    """Parameters one tensor-parallel rank holds of a pipeline stage with ``layers`` blocks
    (the whole model: every block, first and last): the embeddings are replicated over the
    tensor-parallel ranks, the output head is split over the (padded) vocabulary."""
    vocab, d = cfg.padded_vocab_size, cfg.d_model
    n = layers * block_params(cfg, tp)
    if first:
        n += vocab * d + (cfg.seq_len * d if cfg.position == "learned" else 0)
    if last:
        n += _norm_params(cfg) + vocab * d // tp
    return n


def stage_tensors(cfg: ModelConfig, *, layers: int, first: bool, last: bool) -> int:
    """Parameter tensors of a pipeline stage (the same on every tensor-parallel rank): what
    per-tensor work such as the optimizer's update loop or FSDP's copies scales with."""
    norm = 2 if cfg.norm == "layernorm" and cfg.bias else 1
    linears = 4 + (3 if cfg.mlp == "swiglu" else 2)
    n = layers * (2 * norm + linears * (2 if cfg.bias else 1))
    if first:
        n += 2 if cfg.position == "learned" else 1
    if last:
        n += norm + 1
    return n
