"""The run result's schema: every figure of a run's JSON, declared once.

Each :class:`Field` names a figure (its unit in the name), its unit, its kind, a one-line
meaning, how ``measure.repeats`` merges it (engine/repeats.py implements the rules), when a
result carries it, and whether trials.csv and the report show it as a column. Everything that
reads or writes results derives from this table: ``build_result`` and the repeats merge check
their output against it (:func:`conform`), the sweep stores a result whole and the report
takes its columns from it (:func:`columns`). Standard library only, so the tuner imports it
without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

SCHEMA_VERSION = 1

Kind = Literal["measured", "derived", "predicted", "config"]
# measured: read from clocks, counters or the profiler; derived: computed from measured figures;
# predicted: from the configuration's analytic models; config: facts of the run and its setup
Present = Literal["always", "ok", "diverged"]  # "always": also in a diverged run's result
Role = Literal["metric", "note"]  # metric: a number per trial; note: what the numbers mean
# merge rules (engine/repeats.py): same: equal in every launch, else not repeats; first: the
# first launch's (same data and seed); max / mean / sum / any / union over launches (mean and
# max: None if a launch has none); per_launch: kept side by side; elementwise_max /
# dict_mean / elementwise_dict_mean / comm_kinds: per element, key or collective kind;
# config: the launches' common configuration; recomputed: from the pooled samples
# fmt: off
Merge = Literal[
    "same", "first", "max", "mean", "sum", "any", "union", "per_launch", "elementwise_max",
    "dict_mean", "elementwise_dict_mean", "comm_kinds", "config", "recomputed",
]
# fmt: on

#: The step-time breakdown's parts (engine/metrics/timeline.py) and the memory prediction's
#: (engine/metrics/memory_model.py); :func:`conform` holds the engine's output to them.
BREAKDOWN_PARTS: tuple[str, ...] = (
    *("forward", "backward", "optimizer", "comm_exposed", "bubble", "data"),
)
MEM_PARTS: tuple[str, ...] = ("params", "grads", "optimizer", "activations")


@dataclass(frozen=True)
class Column:
    """A trials.csv / report column: a scalar figure, or one part of a list or dict figure."""

    name: str
    field: str
    part: str | int | None  # key of a dict figure, index of a list figure; None: the figure
    role: Role

    def read(self, result: dict[str, Any]) -> Any:
        """This column's value in ``result``; None where the figure is null or absent."""
        value = result.get(self.field)
        if self.part is None or value is None:
            return value
        if isinstance(self.part, int):
            return value[self.part] if len(value) > self.part else None
        return value.get(self.part)


@dataclass(frozen=True)
class Field:
    name: str
    unit: str  # "flag" for true/false; "" where there is none (text, several units)
    kind: Kind
    merge: Merge
    doc: str
    present: Present = "ok"
    column: Role | None = None
    parts: tuple[tuple[str | int, str], ...] = ()  # (key or index, column name) per column

    def columns(self) -> tuple[Column, ...]:
        if self.column is None:
            return ()
        if not self.parts:
            return (Column(self.name, self.name, None, self.column),)
        return tuple(Column(name, self.name, part, self.column) for part, name in self.parts)


def _f(name: str, unit: str, kind: Kind, merge: Merge, doc: str, **kw: Any) -> Field:
    return Field(name, unit, kind, merge, doc, **kw)


M, N = "metric", "note"
_CI = ((0, "tokens_per_s_ci_low"), (1, "tokens_per_s_ci_high"))
_BREAKDOWN = tuple((p, f"breakdown_{p}_s") for p in BREAKDOWN_PARTS)
_MEM = tuple((p, f"mem_{p}_bytes") for p in MEM_PARTS)
# in column order: trials.csv and the report list the columns as they come here
# fmt: off
FIELDS: tuple[Field, ...] = (
    _f("tokens_per_s", "tokens/s", "measured", "recomputed",
       "global-batch tokens per second, median over the timed steps", column=M),
    _f("tokens_per_s_min", "tokens/s", "measured", "recomputed",
       "slowest timed step's throughput", column=M),
    _f("tokens_per_s_max", "tokens/s", "measured", "recomputed",
       "fastest timed step's throughput", column=M),
    _f("tokens_per_s_ci", "tokens/s", "derived", "recomputed",
       "distribution-free interval [low, high] of the median", column=M, parts=_CI),
    _f("tokens_per_s_ci_coverage", "ratio", "derived", "recomputed",
       "the interval's exact coverage probability", column=M),
    _f("tokens_per_s_cv", "ratio", "derived", "recomputed",
       "coefficient of variation of the timed steps' throughput", column=M),
    _f("tokens_per_s_repeats", "tokens/s", "measured", "recomputed",
       "each launch's median throughput (measure.repeats)"),
    _f("repeats", "count", "config", "recomputed",
       "launches pooled into this result"),
    _f("step_time_s", "s", "measured", "recomputed",
       "median optimizer-step time over the timed steps, slowest rank", column=M),
    _f("step_time_s_min", "s", "measured", "recomputed",
       "shortest timed step"),
    _f("step_time_s_max", "s", "measured", "recomputed",
       "longest timed step"),
    _f("step_times_s", "s", "measured", "per_launch",
       "every step's time, slowest rank (per launch when merged)"),
    _f("timed_steps", "", "config", "per_launch",
       "indexes into step_times_s of the timed steps"),
    _f("data_time_s", "s", "measured", "mean",
       "mean time per timed step spent fetching data, slowest rank"),
    _f("peak_mem_bytes", "bytes", "measured", "max",
       "peak memory over the timed steps, max over ranks (CUDA allocator; CPU VmHWM)", column=M),
    _f("peak_mem_bytes_per_rank", "bytes", "measured", "elementwise_max",
       "peak_mem_bytes of each rank"),
    _f("peak_reserved_bytes", "bytes", "measured", "max",
       "CUDA allocator's peak reserved bytes, max over ranks"),
    _f("alloc_retries", "count", "measured", "max",
       "CUDA allocator retries (cache flushes), max over ranks"),
    _f("rss_bytes", "bytes", "measured", "max",
       "CPU resident set at the end of the run, max over ranks"),
    _f("mem_method", "", "config", "same",
       "what peak_mem_bytes reads: cuda_allocator or vmhwm"),
    _f("mem_includes_profiler", "flag", "config", "any",
       "peak_mem_bytes includes the profiler's buffers"),
    _f("comm_count", "count", "measured", "mean",
       "collectives per profiled step per rank", column=M),
    _f("comm_bytes", "bytes", "measured", "mean",
       "collective input bytes per profiled step per rank", column=M),
    _f("comm_time_s", "s", "measured", "mean",
       "seconds per profiled step some collective is in flight, per rank", column=M),
    _f("comm_exposed_s", "s", "measured", "mean",
       "per profiled step, seconds a collective is in flight and the rank computes none", column=M),
    _f("comm", "", "measured", "comm_kinds",
       "per collective kind: count, bytes, time_s, exposed_s, bandwidths"),
    _f("comm_calls", "count", "measured", "dict_mean",
       "collectives per step counted at the process group, by kind"),
    _f("comm_delay_ms", "ms", "config", "same",
       "injected delay per collective (debug.comm_delay_ms)"),
    _f("comm_delay_inline", "count", "measured", "sum",
       "injected delays that ran on the caller's thread"),
    _f("comm_bytes_analytic", "bytes", "predicted", "same",
       "the volume the layout should move per step and rank, by kind"),
    _f("comm_unknown_dtypes", "", "measured", "union",
       "dtypes of collectives whose size could not be counted"),
    _f("comm_notes", "", "config", "same",
       "caveats of the communication figures"),
    _f("breakdown", "s", "measured", "dict_mean",
       "seconds per profiled step by part, mean over ranks", column=M, parts=_BREAKDOWN),
    _f("breakdown_per_rank", "s", "measured", "elementwise_dict_mean",
       "the breakdown of each rank"),
    _f("comm_busy_s_steps", "s", "measured", "per_launch",
       "per profiled step: seconds some collective is in flight"),
    _f("comm_exposed_s_steps", "s", "measured", "per_launch",
       "per profiled step: seconds of exposed communication"),
    _f("breakdown_step_s", "s", "measured", "mean",
       "the stopwatch's step time over the profiled steps", column=M),
    _f("breakdown_sum_error", "ratio", "derived", "recomputed",
       "(sum of the parts - breakdown_step_s) / breakdown_step_s", column=M),
    _f("tensor_peak_bytes", "bytes", "measured", "max",
       "CPU: peak bytes of live tensors over the profiled steps, max over ranks", column=M),
    _f("tensor_peak_bytes_per_rank", "bytes", "measured", "elementwise_max",
       "tensor_peak_bytes of each rank"),
    _f("predicted_peak_mem_bytes", "bytes", "predicted", "same",
       "analytic peak memory of the highest rank", column=M),
    _f("predicted_peak_mem_bytes_per_rank", "bytes", "predicted", "same",
       "analytic peak memory of each rank"),
    _f("mem_compared_bytes", "bytes", "measured", "max",
       "the measured peak the prediction is compared with", column=M),
    _f("mem_breakdown", "bytes", "predicted", "same",
       "the highest rank's predicted peak by part", column=M, parts=_MEM),
    _f("mem_prediction_error", "ratio", "derived", "recomputed",
       "(predicted - measured) / measured peak memory", column=M),
    _f("mem_prediction_compared_to", "", "config", "same",
       "which figure mem_compared_bytes is", column=N),
    _f("mfu", "ratio", "derived", "recomputed",
       "model FLOPs utilisation (PaLM FLOPs per token)", column=M),
    _f("hfu", "ratio", "derived", "recomputed",
       "hardware FLOPs utilisation, recomputation counted", column=M),
    _f("peak_flops_per_device", "FLOP/s", "config", "same",
       "the MFU peak per device"),
    _f("peak_flops_source", "", "config", "same",
       "where the peak comes from: override, table:<device>, measured-cpu"),
    _f("mfu_note", "", "config", "same",
       "why there is no peak, if there is none"),
    _f("flops_per_token", "FLOP", "derived", "same",
       "model FLOPs per token (PaLM)", present="always", column=M),
    _f("n_params", "count", "config", "same",
       "model parameters", present="always", column=M),
    _f("world_size", "count", "config", "same",
       "ranks of the run", present="always", column=M),
    _f("tokens_per_step", "tokens", "config", "same",
       "tokens per optimizer step (global batch x sequence)", present="always"),
    _f("losses", "nats", "measured", "first",
       "global-batch mean loss per step", present="always"),
    _f("grad_norms", "", "measured", "first",
       "gradient norm per step", present="always"),
    _f("final_loss", "nats", "measured", "first",
       "the last step's loss", column=M),
    _f("loss_scale", "", "measured", "first",
       "fp16 loss scale at the end (None without fp16)", present="always"),
    _f("skipped_steps", "count", "measured", "max",
       "fp16 steps skipped for overflow, rank 0", present="always"),
    _f("skipped_steps_per_rank", "count", "measured", "elementwise_max",
       "skipped steps of each rank", present="always"),
    _f("first_step", "count", "config", "same",
       "the step a resumed run started at", present="always"),
    _f("ckpt_save_s", "s", "measured", "mean",
       "mean seconds per checkpoint save, slowest rank"),
    _f("ckpt_load_s", "s", "measured", "mean",
       "seconds to load the checkpoint resumed from, slowest rank"),
    _f("compile_s", "s", "measured", "mean",
       "torch.compile wall time in the warmup steps, slowest rank (0: eager)", column=M),
    _f("timing_includes_profiler", "flag", "config", "any",
       "the timed steps ran under the profiler", column=N),
    _f("model_notes", "", "config", "same",
       "where the model lies outside the FLOPs, memory and traffic formulas", present="always"),
    _f("not_measured", "", "config", "same",
       "figure -> why this run has no value for it", column=N),
    _f("status", "", "config", "first",
       "ok, or nan when the run diverged", present="always"),
    _f("error", "", "config", "first",
       "why a diverged run stopped", present="diverged"),
    _f("schema_version", "", "config", "same",
       "version of this schema", present="always"),
    _f("device", "", "config", "same",
       "cuda or cpu", present="always"),
    _f("backend", "", "config", "same",
       "nccl or gloo", present="always"),
    _f("torch_version", "", "config", "same",
       "torch that ran the run", present="always"),
    _f("host", "", "config", "same",
       "host name of rank 0", present="always"),
    _f("config", "", "config", "config",
       "the resolved run configuration", present="always"),
)
# fmt: on
FIELD: dict[str, Field] = {f.name: f for f in FIELDS}
assert len(FIELD) == len(FIELDS), "a figure is declared twice"


def names(status: str = "ok") -> tuple[str, ...]:
    """The keys a result of ``status`` ("ok", or "nan" for a diverged run) carries."""
    carried = ("always", "diverged" if status == "nan" else "ok")
    return tuple(f.name for f in FIELDS if f.present in carried)


def columns(role: Role | None = None) -> tuple[Column, ...]:
    """trials.csv / report columns in order, all or those of one ``role``."""
    out = tuple(c for f in FIELDS for c in f.columns())
    return tuple(c for c in out if role is None or c.role == role)


def column_values(result: dict[str, Any]) -> dict[str, Any]:
    """Every column's value in ``result`` (None where a figure is null or absent)."""
    return {c.name: c.read(result) for c in columns()}


def from_columns(flat: dict[str, Any]) -> dict[str, Any]:
    """A result-shaped dict from per-column values (a study stored before results were kept
    whole held one attribute per column); figures it lacks are absent, parts None."""
    out = {k: v for k, v in flat.items() if k in FIELD}
    for f in FIELDS:
        if f.parts and any(name in flat for _, name in f.parts):
            values = [(part, flat.get(name)) for part, name in f.parts]
            out[f.name] = [v for _, v in values] if isinstance(f.parts[0][0], int) else dict(values)
    return out


def conform(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` in schema order, after checking it carries exactly the declared figures of
    its status, and every declared part (a mismatch is a programming error in the engine)."""
    expected = set(names(result.get("status", "ok")))
    missing, extra = sorted(expected - set(result)), sorted(set(result) - expected)
    assert not missing and not extra, (
        f"result differs from engine/result_schema.py: missing {missing}, undeclared {extra}"
    )
    for f in FIELDS:
        value = result.get(f.name)
        if f.parts and isinstance(value, dict):  # more parts may be reported beside these
            lacks = sorted(str(p) for p, _ in f.parts if p not in value)
            assert not lacks, f"`{f.name}` lacks the declared part(s) {lacks}: {sorted(value)}"
    return {name: result[name] for name in FIELD if name in result}


def figure(result: dict[str, Any], name: str) -> Any:
    """``result[name]`` for a declared figure (None if this result lacks it); an undeclared
    name is a programming error, not a silent blank."""
    assert name in FIELD, f"`{name}` is not a figure of engine/result_schema.py"
    return result.get(name)
