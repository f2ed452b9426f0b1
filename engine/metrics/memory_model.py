"""Analytic peak memory per rank, split into parameters, gradients, optimizer state and
activations, to put next to the measured peak.

Model states follow the ZeRO paper (Rajbhandari et al. 2020, section 3): fp32 parameters (4Ψ),
gradients (4Ψ) and Adam's two moments (8Ψ), divided by the data-parallel degree where a ZeRO
stage shards them. Activations follow Korthikanti et al. 2022 (section 4.1), re-derived for this
block: pre-norm, separate q/k/v projections, fused attention (no s² score matrix is kept), no
dropout. Per layer and token, backward keeps (h = d_model, f = d_ff):

    norm inputs 2h (fp32 residual stream) + norm outputs 2h + q, k, v 3h + attention output h
    + output-projection input h + MLP up output and activation output 2f (SwiGLU: 4f)
    = 17h with f = 4h, GELU (Korthikanti's 34sbh counts 2-byte elements; here bytes depend on
    the precision), RMSNorm keeps one more h per norm (its normalised input).

Tensor parallelism divides everything between the column- and row-parallel linears by tp;
sequence parallelism also divides the norms' inputs. The last stage adds the loss head: the
logits, log-probabilities and, at the start of backward, two gradients of that size (the fp32
copy of low-precision logits is freed by then). Pipeline stages hold the activations of the
micro-batches in flight (all of them for GPipe-like schedules, up to pp for 1F1B-like ones).
With activation checkpointing a layer keeps only its input (full) or also its matmul and
attention outputs (selective), and backward recomputes one layer at a time, after the loss
head's tensors are gone.

Two moments compete for the peak: the start of the last backward (activations, loss head,
gradients of earlier micro-batches) and the optimizer step (all gradients, optimizer
temporaries). With checkpointing a third: the end of backward, when the stage's first layer is
recomputed while every later layer's gradients exist (a checkpointed layer keeps less than its
gradients). The largest is the prediction; its parts are the breakdown.

Building the model is a third, host-side moment (``host_build``, reported beside the parts and
not in ``total``): each rank builds its part on the meta device and initialises it one full
parameter at a time on the CPU (engine/weights.py), so the host holds the largest full
parameter this rank initialises and its slice, plus, on a CPU device, the rank's shard itself.
Embedding and head count with the padded vocabulary (model.vocab_pad_multiple).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from engine.config import PP_SCHEDULES, RunConfig
from engine.stages import coordinates, local_stage_ids, split_layers, stages_per_rank

FP32 = 4
_COMPUTE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# schedules that run every micro-batch's forward before the backwards start
_ALL_IN_FLIGHT = {"gpipe", "looped_bfs"}
# schedules that split a layer's backward into an input-gradient and a weight-gradient pass
_SPLIT_BACKWARD = {"interleaved_zero_bubble", "zbv_zero_bubble", "dualpipev"}


@dataclass(frozen=True)
class MemoryPrediction:
    params: int
    grads: int
    optimizer: int
    activations: int
    host_build: int = 0  # peak host bytes while the model part is built (not in total)

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _block_params(cfg: RunConfig) -> int:
    """Parameters of one block held by one tensor-parallel rank."""
    m, tp = cfg.model, cfg.parallel.tp
    d, f, b = m.d_model, m.d_ff, 1 if m.bias else 0
    norm = d * (2 if m.norm == "layernorm" and m.bias else 1)
    col = 3 * (d * d + b * d) + (2 if m.mlp == "swiglu" else 1) * (d * f + b * f)
    row = d * d + f * d
    return (col + row) // tp + 2 * b * d + 2 * norm  # row-parallel biases are replicated


def _stage_params(cfg: RunConfig, layers: int, *, first: bool, last: bool) -> int:
    m, tp = cfg.model, cfg.parallel.tp
    vocab = m.padded_vocab_size
    n = layers * _block_params(cfg)
    if first:
        n += vocab * m.d_model + (m.seq_len * m.d_model if m.position == "learned" else 0)
    if last:
        n += m.d_model * (2 if m.norm == "layernorm" and m.bias else 1)
        n += vocab * m.d_model // tp  # vocabulary-parallel head
    return n


def _largest_param(cfg: RunConfig, *, layers: int, first: bool, last: bool) -> int:
    """Elements of the largest full (unsharded) parameter of a stage."""
    m = cfg.model
    sizes = [m.d_model * max(m.d_model, m.d_ff)] if layers else []
    if first:
        sizes += [m.padded_vocab_size * m.d_model, m.seq_len * m.d_model]
    if last:
        sizes.append(m.padded_vocab_size * m.d_model)
    return max(sizes, default=0)


def host_build_bytes(cfg: RunConfig, rank: int, device: str) -> int:
    """Peak host bytes while rank ``rank`` builds and initialises its part (module docstring)."""
    p = cfg.parallel
    pp_rank, _, _ = coordinates(rank, p)
    ids, split, n_stages = _local_stages(cfg, pp_rank)
    largest = max(
        _largest_param(cfg, layers=len(split[s]), first=s == 0, last=s == n_stages - 1) for s in ids
    )
    # the full value, and this rank's slice of it when a copy is needed to make it contiguous
    transient = FP32 * (largest + (largest // p.tp if p.tp > 1 else 0))
    if device != "cpu":
        return transient
    psi = sum(_stage_params(cfg, len(split[s]), first=s == 0, last=s == n_stages - 1) for s in ids)
    shard = FP32 * psi // (p.dp if p.dp > 1 and p.zero >= 2 else 1)
    return shard + transient


def _local_stages(cfg: RunConfig, pp_rank: int) -> tuple[list[int], list[list[int]], int]:
    """(this pipeline rank's stage ids, layers of every stage, number of stages)."""
    p, m = cfg.parallel, cfg.model
    n_stages = p.pp * stages_per_rank(p.pp_schedule, p.pp_virtual_stages)
    if p.pp == 1:
        return [0], [list(range(m.n_layers))], 1
    ids = local_stage_ids(pp_rank, p.pp, p.pp_schedule, p.pp_virtual_stages)
    return ids, split_layers(m, n_stages), n_stages


def _layer_activation_bytes(cfg: RunConfig, tokens: int) -> int:
    """Bytes one layer keeps for backward for ``tokens`` tokens (see the module docstring)."""
    m, p = cfg.model, cfg.parallel
    h, f, tp = m.d_model, m.d_ff, p.tp
    c = _COMPUTE_BYTES[cfg.train.precision]
    seq = tp if p.sp else 1  # sequence parallelism splits what lies outside the linears
    norm_in = 2 * h * FP32 // seq  # the residual stream stays fp32 under autocast
    if m.norm == "rmsnorm":
        norm_in += 2 * h * FP32 // seq  # the normalised input, kept for the weight's gradient
    norm_out = 2 * h * c  # inputs of the column-parallel linears (gathered under SP)
    attn = (3 + 1 + 1) * h * c // tp  # q, k, v, attention output, output-projection input
    mlp = (4 if m.mlp == "swiglu" else 2) * f * c // tp
    return tokens * (norm_in + norm_out + attn + mlp)


def _checkpointed_layer_bytes(cfg: RunConfig, tokens: int) -> int:
    """What a checkpointed layer keeps (engine/parallel/activation.py): full keeps the block's
    input; selective also the outputs of its matmuls and of attention."""
    m, p = cfg.model, cfg.parallel
    h, f, tp = m.d_model, m.d_ff, p.tp
    c = _COMPUTE_BYTES[cfg.train.precision]
    kept = h * FP32 // (tp if p.sp else 1)  # the block input (residual stream, fp32)
    if cfg.train.activation_checkpointing == "selective":
        kept += (3 + 1) * h * c // tp  # q, k, v projections and attention output
        kept += 2 * h * c  # output projection and MLP down outputs (before the all-reduce)
        kept += (2 if m.mlp == "swiglu" else 1) * f * c // tp  # up (and gate) outputs
    return tokens * kept


def _loss_head_bytes(cfg: RunConfig, tokens: int) -> int:
    m, c = cfg.model, _COMPUTE_BYTES[cfg.train.precision]
    # the logits (kept by the step's loop until backward is done), log-probabilities (kept by
    # log_softmax) and, at the start of backward, their gradient and the logits' gradient;
    # the fp32 copy of low-precision logits is gone by then (log_softmax keeps its output)
    per_logit = c + 3 * FP32
    head_in = m.d_model * (FP32 + c)  # final norm input and output
    return tokens * (m.padded_vocab_size // cfg.parallel.tp * per_logit + head_in)


def _last_recompute(cfg: RunConfig, *, tokens: int, layers: int, last: bool) -> tuple[int, int]:
    """(gradients, activations) beyond the checkpointed layers' inputs at the end of a
    checkpointed backward, when the stage's first layer is recomputed in full while the
    gradients of every later layer already exist. A checkpointed layer keeps far less than
    its parameters' gradients, so this moment, not the start of backward, is the peak."""
    m, p = cfg.model, cfg.parallel
    c, tp = _COMPUTE_BYTES[cfg.train.precision], p.tp
    zero = p.zero if p.dp > 1 else 0
    n_micro = cfg.train.global_batch // (p.dp * cfg.train.micro_batch)
    # the recomputed layer, its backward's largest temporaries (the gradients of the MLP's
    # hidden activation and of its input, alive together) and the logits the step's loop holds
    work = _layer_activation_bytes(cfg, tokens) + 2 * tokens * m.d_ff * c // tp
    if last:  # a pipeline schedule keeps every micro-batch's (see predict)
        work += (n_micro if p.pp > 1 else 1) * tokens * m.padded_vocab_size // tp * c
    grads = 0
    if n_micro == 1:  # with accumulation they exist from the first micro-batch on (counted)
        shard = p.dp if zero >= 2 else 1
        head = m.padded_vocab_size * m.d_model // tp if last else 0
        grads = FP32 * ((layers - 1) * _block_params(cfg) + head) // shard
    if zero >= 2:
        # FSDP's reduce-scatter input: the unsharded gradients of the unit being reduced
        grads += FP32 * _block_params(cfg)
    return grads, work


def _in_flight(cfg: RunConfig, n_micro: int, stage_rank: int) -> int:
    p = cfg.parallel
    if p.pp == 1:
        return 1  # gradient accumulation: one micro-batch at a time
    if p.pp_schedule in _ALL_IN_FLIGHT:
        return n_micro
    if PP_SCHEDULES[p.pp_schedule] == "single":
        return min(n_micro, p.pp - stage_rank)  # 1F1B warm-up depth
    return min(n_micro, 2 * p.pp)  # interleaved, zero-bubble and V schedules: a bound


def predict(cfg: RunConfig, rank: int, device: str) -> MemoryPrediction:
    """Predicted peak of rank ``rank`` (global rank) of a validated config on ``device``
    ("cpu" or "cuda")."""
    p, t, m = cfg.parallel, cfg.train, cfg.model
    pp_rank, _, _ = coordinates(rank, p)
    c = _COMPUTE_BYTES[t.precision]
    n_micro = t.global_batch // (p.dp * t.micro_batch)
    ids, split, n_stages = _local_stages(cfg, pp_rank)
    psi = sum(_stage_params(cfg, len(split[s]), first=s == 0, last=s == n_stages - 1) for s in ids)
    layers = sum(len(split[s]) for s in ids)
    last = (n_stages - 1) in ids
    dp, zero = p.dp, p.zero if p.dp > 1 else 0
    ddp = zero in (0, 1) and dp > 1 and p.tp == 1 and p.pp == 1

    # model states (ZeRO paper): fp32 master weights, gradients, Adam moments
    master = FP32 * psi // (dp if zero >= 2 else 1)
    grads_full = FP32 * psi // (dp if zero >= 2 else 1)
    buckets = FP32 * psi if ddp else 0  # DDP's flat gradient buckets, allocated once
    moments = 2 * FP32 * psi // (dp if zero >= 1 else 1)
    # parameters in the compute dtype while forward/backward run: FSDP's gathered copies
    # (kept forward to backward under zero 2, one block plus the prefetched next under zero 3),
    # or autocast's cached low-precision copies
    if zero == 2:
        compute_copy = c * psi
    elif zero == 3:
        compute_copy = 2 * c * _block_params(cfg)
    else:
        compute_copy = c * psi if c != FP32 else 0

    tokens = t.micro_batch * m.seq_len
    per_layer = _layer_activation_bytes(cfg, tokens)
    head = _loss_head_bytes(cfg, tokens) if last else 0
    in_flight = _in_flight(cfg, n_micro, pp_rank)
    if last and p.pp > 1:
        # the schedule keeps every micro-batch's output (the logits) until the step ends, to
        # return them merged; the current one's are in ``head`` already
        head += (n_micro - 1) * tokens * m.padded_vocab_size // p.tp * c
    # gradients of earlier micro-batches; FSDP accumulates them unsharded (no reduce-scatter
    # until the last micro-batch)
    accumulated = (FP32 * psi if zero >= 2 else grads_full) if n_micro > 1 else 0
    start = MemoryPrediction(
        params=master + compute_copy,
        grads=buckets + accumulated,
        optimizer=moments,
        activations=in_flight * layers * per_layer + head,
    )
    if t.activation_checkpointing != "none":
        kept = in_flight * layers * _checkpointed_layer_bytes(cfg, tokens)
        if p.pp > 1 and p.pp_schedule in _SPLIT_BACKWARD and n_micro > 1:
            # these schedules run a layer's input-gradient and weight-gradient passes apart;
            # the tensors the recomputation made for the first stay alive until the second, so
            # every layer in flight holds its full activations again (one micro-batch leaves
            # no work to put between the two: the weight pass follows at once)
            kept += in_flight * layers * per_layer
        start = replace(start, activations=kept + head)
        late_grads, work = _last_recompute(cfg, tokens=tokens, layers=layers, last=last)
        end = replace(start, grads=start.grads + late_grads, activations=kept + work)
        backward = max(start, end, key=lambda x: x.total)
    else:
        backward = start
    # the optimizer step: every gradient, plus a foreach temporary of the moments' size on
    # CUDA (sqrt of the second moment); CPU steps one parameter at a time, with two temporaries
    # of the largest parameter's size (the bias-corrected root of the second moment, the update)
    if device == "cuda":
        temps = FP32 * psi // (dp if zero >= 1 else 1)
    else:
        largest = max(
            _largest_param(cfg, layers=len(split[s]), first=s == 0, last=s == n_stages - 1)
            for s in ids
        )
        temps = 2 * FP32 * largest // (dp if zero >= 2 else 1)
    step = MemoryPrediction(
        params=master, grads=buckets + grads_full, optimizer=moments + temps, activations=0
    )
    peak = max(backward, step, key=lambda x: x.total)
    return replace(peak, host_build=host_build_bytes(cfg, rank, device))


def predict_all(cfg: RunConfig, device: str) -> list[MemoryPrediction]:
    return [predict(cfg, r, device) for r in range(cfg.parallel.n_ranks)]
