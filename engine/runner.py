"""One rank's whole run: join the group, train, gather every rank's records, write the result."""

from __future__ import annotations

import logging
import sys
import traceback

import torch
import torch.distributed as dist

from engine import runtime
from engine.config import RunConfig
from engine.metrics.cpu_peak import cpu_peak
from engine.metrics.flops import Peak, gpu_peak, override_flops
from engine.recipe import Recipe
from engine.results import build_result, write_json_atomic
from engine.sources import recipe_for
from engine.train import RankRecord, train
from engine.validate import validate

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_CONFIG = 2
EXIT_DIVERGED = 3  # the run stopped because the loss became NaN/inf

# figures the result derives from the model's shape (FLOPs, memory model, analytic traffic):
# a user's module has no such model, so they are not reported for it
_SHAPE_FIGURES = (
    "flops_per_token",
    "mfu",
    "hfu",
    "predicted_peak_mem_bytes",
    "predicted_peak_mem_bytes_per_rank",
    "mem_breakdown",
    "mem_prediction_error",
    "comm_bytes_analytic",
)


def setup_logging(rank: int) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s [rank{rank}] %(name)s %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


def resolve_peak(cfg: RunConfig, device: torch.device) -> Peak | None:
    """The MFU peak, settled before training so that an unknown device costs the MFU figure
    and a warning, never the run. None on CPU without an override: the matmul is measured
    after training (``measured_peak``), so that it never competes with the ranks for cores."""
    override = override_flops(cfg.measure.peak_tflops, cfg.peak_flops)
    if device.type == "cuda":
        return gpu_peak(torch.cuda.get_device_name(device), cfg.train.precision, override=override)
    return Peak(override, "override") if override else None


def measured_peak(cfg: RunConfig) -> Peak:
    return Peak(cpu_peak(torch.get_num_threads(), cfg.train.precision), "measured-cpu")


def _gather(record: RankRecord, ctx: runtime.DistContext) -> list[RankRecord]:
    if not ctx.initialized or ctx.world_size == 1:
        return [record]
    records: list[RankRecord | None] = [None] * ctx.world_size
    dist.all_gather_object(records, record)
    return [r for r in records if r is not None]


def collect(
    cfg: RunConfig, record: RankRecord, ctx: runtime.DistContext, *, peak: Peak | None
) -> dict | None:
    """The run's result from every rank's record (all ranks call it; rank 0 gets the result,
    the others None). ``peak``: ``resolve_peak``'s, taken before training."""
    records = _gather(record, ctx)
    if not ctx.is_main:
        return None
    return build_result(cfg, records, peak=peak or measured_peak(cfg), device=ctx.device)


def user_module_figures(result: dict, *, n_params: int | None) -> None:
    """Null the shape-derived figures of a user's module, saying why."""
    why = "a user's module: the engine has no FLOP, memory or traffic model of it"
    result["n_params"] = n_params  # the module's own count, not the GPT's
    for key in _SHAPE_FIGURES:
        if key in result:
            result[key] = None
            result.setdefault("not_measured", {})[key] = why


def _model_figures(result: dict, recipe: Recipe) -> None:
    if recipe.model_config is None:
        user_module_figures(result, n_params=getattr(recipe, "n_params", None))


def run(cfg: RunConfig) -> dict | None:
    """Run this rank; rank 0 returns (and writes, if ``cfg.out``) the result, others None."""
    cfg = validate(cfg)
    ctx = runtime.init(cfg)
    try:
        peak = resolve_peak(cfg, ctx.device) if ctx.is_main else None
        recipe = recipe_for(cfg)  # a user's factory runs here, on every rank
        result = collect(cfg, train(cfg, ctx, recipe), ctx, peak=peak)
        if result is not None:
            _model_figures(result, recipe)
        if result is not None and cfg.out:
            write_json_atomic(cfg.out, result)
        return result
    finally:
        runtime.close(ctx)


def main_rank(cfg: RunConfig) -> int:
    """Entry point of one launched rank; returns the process exit code."""
    import os

    setup_logging(int(os.environ.get("RANK", "0")))
    try:
        result = run(cfg)
    except Exception:  # one line for the launcher's log reader, then the full traceback
        log.error("run failed:\n%s", traceback.format_exc())
        return EXIT_CRASH
    if result is not None and result["status"] == "nan":
        log.error("%s", result.get("error"))
        return EXIT_DIVERGED
    if result is not None:
        log.info(
            "tokens/s %.1f  step %.4fs  loss %.4f",
            result["tokens_per_s"],
            result["step_time_s"],
            result["final_loss"],
        )
    return EXIT_OK
