"""The byte counts the analytic memory model (engine/metrics/memory_model.py) adds up:
activations per layer and token, the loss head, the
recomputation of a checkpointed layer and a pipeline stage's buffers. The module docstring
there says which moments they meet in."""

from __future__ import annotations

from engine.config import RunConfig
from engine.shapes import block_params
from engine.validate import SPLIT_BACKWARD

FP32 = 4
COMPUTE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def largest_param(cfg: RunConfig, *, layers: int, first: bool, last: bool) -> int:
    """Elements of the largest full (unsharded) parameter of a stage."""
    m = cfg.model
    sizes = [m.d_model * max(m.d_model, m.d_ff)] if layers else []
    if first:
        sizes += [m.padded_vocab_size * m.d_model, m.seq_len * m.d_model]
    if last:
        sizes.append(m.padded_vocab_size * m.d_model)
    return max(sizes, default=0)


def stream_bytes(cfg: RunConfig) -> int:
    """Bytes per element of the residual stream. Autocast computes matmuls in low precision
    but leaves the embedding's output and the residual additions fp32; FSDP's mixed-precision
    policy (ZeRO 2/3) casts the parameters themselves, so the embedding already returns the
    compute dtype and the whole stream, stage boundaries included, stays in it."""
    p = cfg.parallel
    return COMPUTE_BYTES[cfg.train.precision] if p.dp > 1 and p.zero >= 2 else FP32


def layer_activation_bytes(cfg: RunConfig, tokens: int) -> int:
    """Bytes one layer keeps for backward for ``tokens`` tokens (see the module docstring)."""
    m, p = cfg.model, cfg.parallel
    h, f, tp = m.d_model, m.d_ff, p.tp
    c = COMPUTE_BYTES[cfg.train.precision]
    seq = tp if p.sp else 1  # sequence parallelism splits what lies outside the linears
    norm_in = 2 * h * stream_bytes(cfg) // seq  # the residual stream (see stream_bytes)
    if m.norm == "rmsnorm":
        norm_in += 2 * h * FP32 // seq  # the normalised input, kept for the weight's gradient
    norm_out = 2 * h * c  # inputs of the column-parallel linears (gathered under SP)
    attn = (3 + 1 + 1) * h * c // tp  # q, k, v, attention output, output-projection input
    mlp = (4 if m.mlp == "swiglu" else 2) * f * c // tp
    return tokens * (norm_in + norm_out + attn + mlp)


def weight_pass_stash_bytes(cfg: RunConfig, tokens: int) -> int:
    """What one layer keeps for one micro-batch between a split backward's input pass and its
    weight pass, beyond its activations (which the input pass retains for the weight pass):
    the gradients at the outputs of its weight-bearing ops, which the input pass stashes for
    the weight pass to multiply with their inputs (dW = dY^T X, Qi et al. 2023, section 2):
    the column-parallel q, k, v and MLP up (and gate) outputs (sharded by tp), the
    row-parallel output projection and MLP down outputs (whole), and the two norms' outputs
    (in the stream's dtype)."""
    m, p = cfg.model, cfg.parallel
    h, c = m.d_model, COMPUTE_BYTES[cfg.train.precision]
    up = (2 if m.mlp == "swiglu" else 1) * m.d_ff
    return tokens * ((3 * h + up) * c // p.tp + 2 * h * c + 2 * h * stream_bytes(cfg))


def checkpointed_layer_bytes(cfg: RunConfig, tokens: int) -> int:
    """What a checkpointed layer keeps (engine/parallel/activation.py): full keeps the block's
    input; selective also the outputs of its matmuls and of attention."""
    m, p = cfg.model, cfg.parallel
    h, f, tp = m.d_model, m.d_ff, p.tp
    c = COMPUTE_BYTES[cfg.train.precision]
    kept = h * stream_bytes(cfg) // (tp if p.sp else 1)  # the block input (residual stream)
    if cfg.train.activation_checkpointing == "selective":
        kept += (3 + 1) * h * c // tp  # q, k, v projections and attention output
        kept += 2 * h * c  # output projection and MLP down outputs (before the all-reduce)
        kept += (2 if m.mlp == "swiglu" else 1) * f * c // tp  # up (and gate) outputs
    return tokens * kept


def loss_head_bytes(cfg: RunConfig, tokens: int) -> int:
    m, c = cfg.model, COMPUTE_BYTES[cfg.train.precision]
    # the logits (kept by the step's loop until backward is done), log-probabilities (kept by
    # log_softmax) and, at the start of backward, their gradient and the logits' gradient;
    # the fp32 copy of low-precision logits is gone by then (log_softmax keeps its output)
    per_logit = c + 3 * FP32
    head_in = m.d_model * (stream_bytes(cfg) + c)  # final norm input and output
    return tokens * (m.padded_vocab_size // cfg.parallel.tp * per_logit + head_in)


def last_recompute(cfg: RunConfig, *, tokens: int, layers: int, last: bool) -> tuple[int, int]:
    """(gradients, activations) beyond the checkpointed layers' inputs at the end of a
    checkpointed backward, when the stage's first layer is recomputed in full while the
    gradients of every later layer already exist. A checkpointed layer keeps far less than
    its parameters' gradients, so this moment, not the start of backward, is the peak."""
    m, p = cfg.model, cfg.parallel
    c, tp = COMPUTE_BYTES[cfg.train.precision], p.tp
    zero = p.zero if p.dp > 1 else 0
    n_micro = cfg.train.global_batch // (p.dp * cfg.train.micro_batch)
    # the recomputed layer, its backward's largest temporaries (the gradients of the MLP's
    # hidden activation and of its input, alive together) and the logits the step's loop holds
    work = layer_activation_bytes(cfg, tokens) + 2 * tokens * m.d_ff * c // tp
    if p.pp > 1 and p.pp_schedule in SPLIT_BACKWARD:
        # the weight pass asks autograd for one group of weights at a time, and each request
        # recomputes the checkpointed layer again and keeps what its weights' gradients need
        # (the matmuls' inputs: q, k, v, attention output, the MLP's hidden activations) until
        # the pass ends: one copy per weight-bearing op of the block (its linears, its norms)
        ops = 4 + (3 if m.mlp == "swiglu" else 2) + 2
        hidden = (4 if m.mlp == "swiglu" else 2) * m.d_ff
        work = max(work, ops * tokens * (4 * m.d_model + hidden) * c // tp)
    if last:  # a pipeline schedule keeps every micro-batch's (see predict)
        work += (n_micro if p.pp > 1 else 1) * tokens * m.padded_vocab_size // tp * c
    grads = 0
    if n_micro == 1:  # with accumulation they exist from the first micro-batch on (counted)
        shard = p.dp if zero >= 2 else 1
        head = m.padded_vocab_size * m.d_model // tp if last else 0
        grads = FP32 * ((layers - 1) * block_params(cfg.model, cfg.parallel.tp) + head) // shard
    if zero >= 2 and p.pp == 1:
        # FSDP's reduce-scatter input: the unsharded gradients of the unit being reduced (a
        # pipeline schedule reduces a stage's gradients after its backwards, not during them)
        grads += FP32 * block_params(cfg.model, cfg.parallel.tp)
    return grads, work


def stage_buffers(cfg: RunConfig, ids: list[int], n_stages: int) -> int:
    """Bytes a pipeline rank holds across steps, outside any backward: a stage allocates a
    receive buffer for every micro-batch's input (all but the first stage) and for the
    gradient of every micro-batch's output (all but the last) once, and keeps them; the last
    stage still holds the previous step's outputs (the logits, in the compute dtype), which it
    keeps to return them merged."""
    p, t, m = cfg.parallel, cfg.train, cfg.model
    if p.pp == 1:
        return 0
    n_micro = t.global_batch // (p.dp * t.micro_batch)
    tokens = t.micro_batch * m.seq_len
    boundary = tokens * m.d_model * stream_bytes(cfg)  # the residual stream crosses stages
    logits = tokens * m.padded_vocab_size // p.tp * COMPUTE_BYTES[t.precision]
    per_micro = 0
    for s in ids:
        per_micro += (boundary if s > 0 else 0) + (boundary if s < n_stages - 1 else logits)
    return n_micro * per_micro
