"""The tuner's typed schema: the engine's run sections, as engine.config declares them, plus the
tuner's own (sweep, launcher, run, export, space, sampler).

The run sections are not written again here: ``TunerConfig`` takes its fields, types and
defaults from ``engine.config.RunConfig``, so a key added to the engine is a key of the tuner.
Hydra checks every composed key and type against this schema (registered as "schema").
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from engine.config import AC_MODES, PP_SCHEDULES, ZERO_STAGES, RunConfig
from engine.validate_values import flatten

# RunConfig fields the launcher sets, not the user: where rank 0 writes its result, where the
# ranks report their step times
LAUNCHER_SET = ("out", "progress")
# run sections: the part of the composed config that becomes the engine's RunConfig
RUN_SECTIONS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in LAUNCHER_SET)
OBJECTIVES = {  # metric -> direction
    "tokens_per_s": "maximize",
    "mfu": "maximize",
    "step_time_s": "minimize",
    "peak_mem_bytes": "minimize",
    "comm_bytes": "minimize",
    "comm_time_s": "minimize",
}
# objectives read from the profiled steps: without them they are not measured (null), and a
# sweep optimising them would optimise nothing
PROFILED_OBJECTIVES = ("comm_bytes", "comm_time_s")


@dataclass
class SweepConfig:
    name: str = "default"  # folder under out_dir and Optuna study name; same name = resume
    n_trials: int = 10  # distinct configurations to measure (repeats of one are not re-run)
    objectives: list[str] = field(default_factory=lambda: ["tokens_per_s"])
    storage: str = ""  # Optuna storage URL; "" = sqlite file in the sweep's folder
    out_dir: str = "reports"
    seed: int = 0  # sampler seed
    # resume (or share) the study on a machine other than the one it was measured on
    allow_other_machine: bool = False
    # queue the performance model's K best layouts of the space first, in any sampler
    seed_from_plan: int = 0
    # at the end, measure again the best and those whose interval reaches it (at most this
    # many; 0 or 1 = off), in this many interleaved rounds (tuner/confirm.py)
    confirm_top: int = 0
    confirm_rounds: int = 3
    # seconds between a running trial's heartbeats (RDB storages; 0 = none): a trial silent for
    # 3 beats lost its worker, and is failed and queued again by the other workers
    heartbeat_s: int = 30
    # stop a trial once, after early_stop_min_steps timed steps, the optimistic end of its
    # tokens/s interval is below the best completed trial's median (tuner/early_stop.py;
    # single objective tokens_per_s, local launcher)
    early_stop: bool = True
    early_stop_min_steps: int = 4


@dataclass
class LauncherConfig:
    timeout_s: float = 300.0  # wall-clock limit of one trial, start-up included
    max_ranks: int = 8  # most ranks started on this machine (CUDA: also at most one per GPU)
    # memory the ranks of one trial may use together on CPU (0 = this machine's memory);
    # a layout predicted to need more is pruned, never launched (tuner/feasibility.py)
    mem_limit_gib: float = 0.0
    # per rank, beyond the tensors the memory model counts: the runtime (CPU), the CUDA
    # context and allocator slack (GPU)
    mem_reserve_gib: float = 0.5
    # which launcher starts a trial's ranks (the `launcher` group): local | torchrun | slurm
    name: str = "local"
    nnodes: int = 1  # nodes one trial spans (torchrun, slurm)
    nproc_per_node: int = 0  # ranks per node; 0 = the layout's ranks / nnodes
    # torchrun: HOST:PORT of the c10d rendezvous, on the sweep's node; "" = 127.0.0.1, free port
    rdzv_endpoint: str = ""
    # torchrun: the command that starts an agent on node 1, 2, ... ("{host}": hosts[i-1],
    # "{node}": i), e.g. "ssh {host}"; the agent's command follows it. "" = on this machine
    node_command: str = ""
    hosts: list[str] = field(default_factory=list)  # torchrun: the other nodes, for "{host}"
    # slurm: more srun options for each trial's step, e.g. [--partition=gpu, --gpus-per-node=8]
    srun_args: list[str] = field(default_factory=list)
    # cores this worker's trials run on, e.g. "0-3" or "0,2" ("" = every core it may use);
    # threads per rank follow from their count
    cpus: str = ""
    # let this worker run beside another on this machine that uses the same cores (their
    # measurements disturb each other; the report flags trials started on a busy machine)
    share_cpus: bool = False
    # GPUs this worker's trials use, as CUDA_VISIBLE_DEVICES numbers them ("" = all)
    devices: str = ""
    # where workers on one machine claim cores and GPUs ("" = sweep.out_dir/.locks)
    lock_dir: str = ""
    # local: fork each rank from a process that imported torch and the engine once per sweep
    # (engine/zygote.py), sparing every rank ~2 s of imports; false: a new interpreter per rank
    fork_ranks: bool = True


@dataclass
class RunOptions:
    out: str = ""  # `tuner run`: also write the run's metrics JSON here


@dataclass
class ExportOptions:
    out: str = "model.pt"  # `tuner export`: the consolidated weights file


@dataclass
class PlanOptions:
    """`tuner plan`: which layouts to enumerate for `cluster`, and what to write."""

    world_size: int = 0  # devices to plan for; 0 = the cluster's (nodes x gpus_per_node)
    top_k: int = 10  # layouts printed, best first
    out: str = ""  # also write every enumerated layout here (JSON list, best first)
    html: str = ""  # the page; "" = <sweep.out_dir>/plans/<model>-<cluster>-<world>.html
    calibrate_from: list[str] = field(default_factory=list)  # sweeps whose trials fit the model
    zero: list[int] = field(default_factory=lambda: list(ZERO_STAGES))
    sp: list[bool] = field(default_factory=lambda: [False, True])
    pp_schedule: list[str] = field(default_factory=lambda: list(PP_SCHEDULES))
    pp_virtual_stages: list[int] = field(default_factory=lambda: [2, 4])
    micro_batch: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    activation_checkpointing: list[str] = field(default_factory=lambda: list(AC_MODES))
    precision: list[str] = field(default_factory=lambda: ["bf16"])


@dataclass
class CalibrateOptions:
    world_sizes: list[int] = field(default_factory=lambda: [2])  # ranks to measure with


@dataclass
class CompareOptions:
    """`tuner compare NAME NAME...`: several sweeps on one page."""

    force: bool = False  # compare sweeps that measured different models
    out: str = ""  # the page; "" = <sweep.out_dir>/compare/<name>-vs-<name>.html


@dataclass
class _TunerSections:
    sweep: SweepConfig = field(default_factory=SweepConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    run: RunOptions = field(default_factory=RunOptions)
    export: ExportOptions = field(default_factory=ExportOptions)
    space: dict[str, Any] = field(default_factory=dict)  # checked by tuner.space
    sampler: dict[str, Any] = field(default_factory=dict)  # a `_target_` sampler spec
    cluster: dict[str, Any] = field(default_factory=dict)  # checked by tuner.perf.cluster
    plan: PlanOptions = field(default_factory=PlanOptions)
    calibrate: CalibrateOptions = field(default_factory=CalibrateOptions)
    compare: CompareOptions = field(default_factory=CompareOptions)


# the tuner's own sections: the keys of the schema that are not run sections
TUNER_SECTIONS = tuple(f.name for f in dataclasses.fields(_TunerSections))


def _copied_fields(cls: type, names: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    """``cls``'s fields ``names`` as make_dataclass specs: the same type (resolved, so Hydra
    can read it) and the same default."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return [
        (
            name,
            hints[name],
            field(default=fields[name].default, default_factory=fields[name].default_factory),
        )
        for name in names
    ]


TunerConfig = dataclasses.make_dataclass(
    "TunerConfig",
    _copied_fields(RunConfig, RUN_SECTIONS) + _copied_fields(_TunerSections, TUNER_SECTIONS),
)
TunerConfig.__module__ = __name__
TunerConfig.__doc__ = "Everything a tuner command reads: RunConfig's sections and the tuner's."
ConfigStore.instance().store(name="schema", node=TunerConfig)


def schema_node(path: str) -> Any:
    """The schema's default at dotted ``path`` ("" = the whole config; None where no such key)."""
    node: Any = TunerConfig()
    for part in [p for p in path.split(".") if p]:
        if not dataclasses.is_dataclass(node):
            return None
        node = getattr(node, part, None)
    return node


def schema_keys(path: str) -> list[str]:
    """Keys of the schema section at dotted ``path`` ("" = top level); [] for a free-form one."""
    node = schema_node(path)
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def run_keys() -> dict[str, type]:
    """Every dotted key of a RunConfig a user sets, and its value's type (``"train.lr": float``)."""
    return {
        key: type(value)
        for key, value in flatten(RunConfig()).items()
        if key.split(".")[0] in RUN_SECTIONS
    }


def replace_keys(run: RunConfig, values: dict[str, Any]) -> RunConfig:
    """A copy of ``run`` with dotted keys (e.g. ``{"parallel.dp": 2}``) replaced."""
    data = run.to_dict()
    for key, value in values.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return RunConfig.from_dict(data)
