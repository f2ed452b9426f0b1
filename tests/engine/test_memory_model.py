"""The analytic memory model's bookkeeping, checked by hand. Its agreement with measured peaks
is checked on every layout by the contract suite (test_layouts.py)."""

from __future__ import annotations

from engine.metrics.memory_model import predict
from engine.model import count_params
from tests.helpers import tiny_config

PSI = count_params(tiny_config().model)["total"]


def test_model_states_follow_the_zero_paper() -> None:
    one = predict(tiny_config(train={"micro_batch": 8}), 0, "cpu")
    assert one.params == 4 * PSI and one.optimizer == 8 * PSI  # fp32 weights, Adam's 2 moments
    assert one.grads == 0  # one micro-batch: no gradient exists before the last backward

    def at(zero: int):
        return predict(tiny_config(parallel={"dp": 2, "zero": zero}), 0, "cpu")

    assert at(1).optimizer == 8 * PSI // 2 and at(1).params == 4 * PSI
    # zero 2 keeps the gathered parameters from forward to backward, zero 3 one block at a time
    assert at(2).params == 4 * PSI // 2 + 4 * PSI
    assert at(3).optimizer == 8 * PSI // 2 and 4 * PSI // 2 < at(3).params < at(2).params
    assert at(0).grads == 4 * PSI  # DDP's flat buckets exist from the start


def test_ddp_gradients_are_views_into_its_buckets() -> None:
    """DDP's gradients live in its buckets: the optimizer step holds 4Ψ of gradients, not the
    buckets and the gradients; the earlier micro-batches' gradients, accumulated outside them
    (no_sync), come on top."""

    def grads(**train):
        # one sample per rank: the activations are too small to set the peak
        cfg = tiny_config(parallel={"dp": 2}, train={"micro_batch": 1, **train})
        return predict(cfg, 0, "cpu").grads

    assert grads(global_batch=2) == 4 * PSI
    assert grads(global_batch=4) == 2 * 4 * PSI
    checkpointed = {"global_batch": 2, "activation_checkpointing": "full"}
    assert grads(**checkpointed) == 4 * PSI  # the later layers' gradients are in the buckets too


def test_one_fsdp_unit_holds_every_unsharded_gradient_until_backward_ends() -> None:
    def at(zero: int, unit_layers: int):
        parallel = {"dp": 2, "zero": zero, "fsdp_unit_layers": unit_layers}
        return predict(tiny_config(parallel=parallel, train={"micro_batch": 4}), 0, "cpu")

    whole, per_block = at(2, 0), at(2, 1)
    # the unsharded gradients, then the reduction's input, gloo's output and the shard
    assert whole.grads == 4 * PSI + 2 * 4 * PSI + 4 * PSI // 2
    assert whole.total > per_block.total
    # zero 3 holds a gathered unit and the next one's gather (one unit: its own output
    # buffer, copied out into the parameters): larger units hold more
    assert at(3, 1).params < at(3, 2).params < at(3, 0).params == 4 * PSI // 2 + 2 * 4 * PSI


def test_pipeline_stages_split_the_parameters_exactly() -> None:
    cfg = tiny_config(parallel={"pp": 2}, train={"micro_batch": 2})
    total = sum(predict(cfg, rank, "cpu").optimizer for rank in range(2))
    assert total == 8 * PSI  # no parameter is held twice


def test_activations_scale_with_tokens_and_shrink_with_checkpointing() -> None:
    def acts(**train):
        return predict(tiny_config(train={"global_batch": 16, **train}), 0, "cpu").activations

    assert acts(micro_batch=8) == 2 * acts(micro_batch=4)
    assert acts(micro_batch=8, activation_checkpointing="full") < acts(
        micro_batch=8, activation_checkpointing="selective"
    )
    assert acts(micro_batch=8, activation_checkpointing="selective") < acts(micro_batch=8)


def test_the_fused_optimizer_step_needs_no_temporaries() -> None:
    cfg = tiny_config(train={"micro_batch": 1, "global_batch": 1})  # activations are tiny
    for device in ("cpu", "cuda"):
        assert predict(cfg, 0, device).optimizer == 8 * PSI  # the two Adam moments alone


def test_full_checkpointing_peaks_at_the_last_recompute() -> None:
    """A checkpointed block keeps only its input, far less than its parameters' gradients: the
    peak comes at the end of backward, with the later layers' gradients, one recomputed layer
    and its backward temporaries alive together."""
    cfg = tiny_config(
        train={"micro_batch": 4, "global_batch": 4, "activation_checkpointing": "full"}
    )
    m = cfg.model
    tokens = 4 * m.seq_len
    peak = predict(cfg, 0, "cpu")
    block = PSI - m.padded_vocab_size * m.d_model * 2 - m.seq_len * m.d_model - 2 * m.d_model
    block //= m.n_layers
    head = m.padded_vocab_size * m.d_model
    assert peak.grads == 4 * ((m.n_layers - 1) * block + head)
    recomputed_at_least = tokens * (2 * m.d_ff * 4 + 2 * m.d_ff * 4)  # MLP outputs + their grads
    kept = m.n_layers * tokens * m.d_model * 4
    assert peak.activations >= kept + recomputed_at_least


def test_zero_bubble_weight_pass_keeps_a_recompute_per_weight_group() -> None:
    """Split backward under full checkpointing: the weight pass recomputes the layer once per
    weight-bearing op (4 attention linears, 2 MLP linears, 2 norms) and keeps each copy of the
    matmuls' inputs until it ends; 1F1B recomputes a layer once."""

    def acts(schedule: str) -> int:
        parallel = {"pp": 2, "pp_schedule": schedule, "pp_virtual_stages": 1}
        train = {"micro_batch": 2, "activation_checkpointing": "full"}
        return predict(tiny_config(parallel=parallel, train=train), 0, "cpu").activations

    m = tiny_config().model
    copies = 8 * 2 * m.seq_len * (4 * m.d_model + 2 * m.d_ff) * 4  # fp32
    assert acts("zbv_zero_bubble") >= copies > acts("1f1b")
