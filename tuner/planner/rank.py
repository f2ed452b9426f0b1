"""Each candidate layout judged: can it run (validity, memory per device), and if so how fast
the performance model says it steps; then all of them, best first."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from engine.config import ConfigError, RunConfig
from engine.metrics.flops import flops_per_token
from engine.metrics.memory_model import predict as predict_memory
from engine.stages import representative_ranks
from engine.validate import validate_layout
from tuner.perf.cluster import Cluster
from tuner.perf.model import Coefficients, predict


@dataclass
class PlanRow:
    """One layout's verdict; the JSON ``plan.out`` writes is a list of these, best first."""

    dp: int
    tp: int
    pp: int
    zero: int
    sp: bool
    pp_schedule: str
    pp_virtual_stages: int
    micro_batch: int
    activation_checkpointing: str
    precision: str
    feasible: bool
    reason: str = ""  # why it cannot run (empty when feasible)
    predicted_mem_bytes_per_gpu: int | None = None
    predicted_step_time_s: float | None = None
    predicted_tokens_per_s: float | None = None
    predicted_mfu: float | None = None
    step_parts_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, cfg: RunConfig, *, feasible: bool, reason: str = "") -> PlanRow:
        p, t = cfg.parallel, cfg.train
        return cls(
            p.dp,
            p.tp,
            p.pp,
            p.zero,
            p.sp,
            p.pp_schedule if p.pp > 1 else "",
            p.pp_virtual_stages,
            t.micro_batch,
            t.activation_checkpointing,
            t.precision,
            feasible,
            reason,
        )

    def as_dict(self) -> dict:
        """The fields by name, sharing ``step_parts_s`` (``dataclasses.asdict`` deep-copies
        every value, which dominates the time of writing tens of thousands of rows)."""
        return {name: getattr(self, name) for name in FIELDS}


FIELDS = tuple(f.name for f in fields(PlanRow))


def peak_memory(cfg: RunConfig, cluster: Cluster) -> int:
    """The largest predicted peak over the pipeline positions (every data- and tensor-parallel
    rank of one position holds the same; ``representative_ranks`` hold the extremes)."""
    p = cfg.parallel
    device = "cpu" if cluster.backend == "gloo" else "cuda"
    stride = p.dp * p.tp
    ranks = representative_ranks(cfg.model, p)
    return max(predict_memory(cfg, r * stride, device).total for r in ranks)


def judge(cfg: RunConfig, cluster: Cluster, coeffs: Coefficients) -> PlanRow:
    try:
        validate_layout(cfg)
    except ConfigError as err:
        return PlanRow.of(cfg, feasible=False, reason=str(err))
    mem = peak_memory(cfg, cluster)
    if mem > cluster.mem_bytes:
        row = PlanRow.of(
            cfg,
            feasible=False,
            reason=f"predicted {mem / 2**30:.1f} GiB per device > {cluster.mem_bytes / 2**30:.1f}"
            f" GiB usable ({cluster.mem_gib:g} GiB less a {cluster.mem_reserve_gib:g} GiB reserve)",
        )
        row.predicted_mem_bytes_per_gpu = mem
        return row
    step = predict(cfg, cluster, coeffs)
    peak = cluster.peak_flops(cfg.train.precision) * cluster.world_size
    row = PlanRow.of(cfg, feasible=True)
    row.predicted_mem_bytes_per_gpu = mem
    row.predicted_step_time_s = step.step_time_s
    row.predicted_tokens_per_s = step.tokens_per_s
    row.predicted_mfu = flops_per_token(cfg.model) * step.tokens_per_s / peak
    row.step_parts_s = {k: v for k, v in step.parts.items() if v}
    return row


def rank_all(cands, cluster: Cluster, coeffs: Coefficients) -> list[PlanRow]:
    """Every candidate judged, the feasible ones fastest first, then the rest."""
    rows = [judge(cfg, cluster, coeffs) for cfg in cands]
    return sorted(rows, key=lambda r: (not r.feasible, -(r.predicted_tokens_per_s or 0.0)))
