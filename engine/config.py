"""Typed run configuration: one plain, JSON-serialisable description of a training run.

The engine never sees Hydra or OmegaConf objects: the tuner turns its composed config into these
dataclasses once, and ``python -m engine run.json`` rebuilds them from JSON.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
MLP_TYPES = ("gelu", "swiglu")
NORM_TYPES = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
AC_MODES = ("none", "selective", "full")  # train.activation_checkpointing
COMPILE_MODES = ("none", "blocks", "model")  # train.compile
ZERO_STAGES = (0, 1, 2, 3)  # parallel.zero
# model.source: the built-in GPT, a transformers configuration, or the user's own module
MODEL_SOURCES = ("gpt", "hf", "custom")
DATA_KINDS = ("synthetic", "tokens")  # data.kind
TOKEN_DTYPES = ("uint16", "uint32")  # data.dtype: what nanoGPT-style pipelines write
# pipeline schedule -> (stage placement, its class in torch.distributed.pipelining.schedules,
# the first torch release that has that class). Placement: "single" (one stage per rank),
# "loop" (several, looped) or "v" (two, in a V). Names only, so that validating a config does
# not import torch; engine.parallel.pipeline looks the classes up by these names.
_PP_TABLE = {
    "gpipe": ("single", "ScheduleGPipe", "2.4"),
    "1f1b": ("single", "Schedule1F1B", "2.4"),
    "interleaved_1f1b": ("loop", "ScheduleInterleaved1F1B", "2.4"),
    "looped_bfs": ("loop", "ScheduleLoopedBFS", "2.4"),
    "interleaved_zero_bubble": ("loop", "ScheduleInterleavedZeroBubble", "2.5"),
    "zbv_zero_bubble": ("v", "ScheduleZBVZeroBubble", "2.6"),
    "dualpipev": ("v", "ScheduleDualPipeV", "2.9"),
}
PP_SCHEDULES = {name: row[0] for name, row in _PP_TABLE.items()}
PP_SCHEDULE_CLASSES = {name: row[1] for name, row in _PP_TABLE.items()}
PP_SCHEDULE_SINCE = {name: row[2] for name, row in _PP_TABLE.items()}


class ConfigError(ValueError):
    """A setting a user can fix; the message names the key, the value and what is valid."""


@dataclass
class ModelConfig:
    """Shape of the GPT-style decoder (architecture only; parallelism is applied from outside)."""

    name: str = "tiny"  # preset name, for reports only
    n_layers: int = 4  # >= 4 so pipeline stages x virtual stages fit on the tiny preset
    n_heads: int = 4  # divisible by 4 so tp in {1, 2, 4} divides the heads
    d_model: int = 128
    d_ff: int = 512  # MLP width; 4 * d_model in GPT-2, ~8/3 * d_model with SwiGLU
    vocab_size: int = 256  # token ids the data uses: 0 .. vocab_size - 1
    # the embedding and head get vocab_size rounded up to a multiple of this (GPT-2's 50,257 ->
    # 50,304, as Megatron-LM and nanoGPT do), so tensor parallelism can split them evenly and
    # the head's matmul has an aligned width; the data never uses the padded ids
    vocab_pad_multiple: int = 128
    seq_len: int = 64  # training context length; also the size of learned position tables
    mlp: str = "gelu"  # gelu (GPT-2) | swiglu (llama-like)
    norm: str = "layernorm"  # layernorm (GPT-2) | rmsnorm (llama-like)
    position: str = "learned"  # learned absolute embeddings (GPT-2) | rope (llama-like)
    bias: bool = True  # Linear/LayerNorm biases (GPT-2 has them, llama does not)
    norm_eps: float = 1e-5
    init_std: float = 0.02  # GPT-2 initialisation
    source: str = "gpt"  # one of MODEL_SOURCES; hf and custom are built by engine/sources.py
    hf_config: str = ""  # source=hf: a transformers config.json; the shape above is read from it
    factory: str = ""  # source=custom: "pkg.module:function" that returns the nn.Module
    n_kv_heads: int = 0  # key/value heads (grouped-query attention, hf only); 0 = n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def shape_known(self) -> bool:
        """Whether the fields above describe the model (FLOPs, memory and traffic formulas
        apply): not for a user's module, whose shape the engine cannot see."""
        return self.source != "custom"

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the token embedding and the output head (vocab_size rounded up)."""
        m = self.vocab_pad_multiple
        return -(-self.vocab_size // m) * m


@dataclass
class ParallelConfig:
    """Degrees of parallelism; the number of ranks is dp * tp * pp."""

    world_size: int = 0  # ranks required (0: whatever dp * tp * pp is); fixes a sweep's size
    dp: int = 1  # data-parallel degree; 0 = world_size / (tp * pp)
    tp: int = 1  # tensor-parallel degree
    pp: int = 1  # pipeline-parallel degree
    zero: int = 0  # ZeRO stage on the data-parallel dimension: 0 (DDP), 1, 2, 3
    sp: bool = False  # sequence parallelism on top of tensor parallelism
    pp_schedule: str = "1f1b"  # one of PP_SCHEDULES
    pp_virtual_stages: int = 1  # stages per rank for the interleaved ("loop") schedules
    ddp_bucket_mb: float = 25.0  # DDP gradient bucket size (PyTorch's default)
    fsdp_unit_layers: int = 1  # blocks per FSDP2 unit under zero 2/3 (one all-gather and one
    # reduce-scatter each); 0 = the whole model as one unit: fewest collectives, but no overlap
    # and every unsharded gradient held until the end of backward

    @property
    def n_ranks(self) -> int:
        return self.dp * self.tp * self.pp


@dataclass
class TrainConfig:
    """What one run trains and measures."""

    micro_batch: int = 4  # sequences per forward/backward on one data-parallel rank
    global_batch: int = 8  # sequences per optimizer step, over all data-parallel ranks
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast + dynamic loss scaling)
    steps: int = 8  # optimizer steps in total, warmup included
    warmup_steps: int = 2  # steps excluded from timing and communication statistics
    seed: int = 0  # seeds both the initial weights and the synthetic data
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 0.0  # max global gradient norm (0 = no clipping; the norm is still reported)
    activation_checkpointing: str = "none"  # none | selective | full
    reduce_dtype: str = "fp32"  # dtype of data-parallel gradient reduction: fp32 | bf16
    loss_scale_growth_interval: int = 2000  # fp16: overflow-free steps before the scale doubles
    # torch.compile: none (eager) | blocks (each transformer block, as torchtitan does) | model
    # (each model part whole); compilation happens in the warmup steps, timed as compile_s
    compile: str = "none"

    @property
    def measured_steps(self) -> int:
        return self.steps - self.warmup_steps


@dataclass
class MeasureConfig:
    """Which steps are measured, and how."""

    profile_steps: int = 2  # last measured steps run under the profiler (communication figures);
    # they are left out of the throughput statistics, since profiling slows a step down
    repeats: int = 1  # independent launches per configuration, merged (done by the launcher)
    count_calls: bool = False  # count collectives a second way, at the process-group API
    # (engine/instrumented_group.py), next to the profiler's count; CPU (gloo) only
    peak_tflops: float = 0.0  # dense peak TFLOP/s of one device at the run's precision, for
    # MFU; 0 = the datasheet table (GPU, by exact device name) or a measured matmul (CPU)
    target_ci: float = 0.0  # stop the timed steps once the tokens/s median's 95% interval,
    # half its width over the median, is at most this (0.05: +-5%); train.steps stays the most
    # steps a run takes, the profiled steps follow the last timed one. 0 = time every step
    min_timed_steps: int = 6  # with target_ci: time at least this many steps before stopping


@dataclass
class CheckpointConfig:
    """Saving and resuming (torch.distributed.checkpoint; see engine/checkpoint.py)."""

    dir: str = ""  # where checkpoints go ("" = no checkpoints)
    every: int = 0  # save after every this many steps (0 = never)
    keep: int = 2  # newest complete checkpoints kept
    resume: bool = False  # continue from the newest complete checkpoint in `dir`


@dataclass
class DebugConfig:
    """Fault injection, so that failure handling can be tested on real runs."""

    fail_at_step: int = -1  # raise an error on this step (-1: never)
    nan_at_step: int = -1  # make every loss NaN from this step on (-1: never)
    dump_params: str = ""  # write the final, unsharded parameters here (torch.save; tests)
    overflow_at_step: int = -1  # put an inf into one gradient on rank 0 at this step (fp16 tests)
    comm_delay_ms: float = 0.0  # add this latency to every collective (checks the comm timing);
    # CPU (gloo) only, implies measure.count_calls


@dataclass
class DataConfig:
    """Where the training tokens come from (engine/data.py)."""

    kind: str = "synthetic"  # synthetic (seeded induction task) | tokens (a file of token ids)
    path: str = ""  # kind=tokens: a flat binary file of token ids, memory-mapped
    dtype: str = "uint16"  # kind=tokens: the file's id type, uint16 | uint32


@dataclass
class RunConfig:
    """Everything one training run needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    data: DataConfig = field(default_factory=DataConfig)
    device: str = "auto"  # auto: cuda when available, else cpu
    peak_flops: float = 0.0  # measure.peak_tflops in FLOP/s (older key; both set must agree)
    out: str = ""  # where rank 0 writes the result JSON ("" = do not write)
    # folder where each rank appends its step times as it runs (engine.progress_log), for a
    # launcher that watches the run ("" = none)
    progress: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return _build(cls, data, prefix="")

    @classmethod
    def from_json_file(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _build(cls: type, data: dict[str, Any], *, prefix: str) -> Any:
    """Build dataclass ``cls`` from a dict, refusing unknown keys (a silent typo is a bug)."""
    if not isinstance(data, dict):
        raise ConfigError(f"`{prefix.rstrip('.') or 'config'}` must be a mapping, got {data!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {[prefix + k for k in unknown]}; valid keys: "
            f"{[prefix + k for k in fields]}."
        )
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name) if _has_default(fields[name]) else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, prefix=f"{prefix}{name}.")
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ConfigError(
                    f"`{prefix}{name}` must be a list of {len(default)} values, but got {value!r}."
                )
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
