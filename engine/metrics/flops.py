"""Model FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B) and device peaks for MFU."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from engine.config import ModelConfig
from engine.shapes import count_params

log = logging.getLogger(__name__)


def _peaks(*, fp32: float | None, bf16: float) -> dict[str, float]:
    """TFLOP/s figures -> FLOP/s per precision (fp16 runs at the bf16 tensor-core rate)."""
    out = {"bf16": bf16 * 1e12, "fp16": bf16 * 1e12}
    if fp32 is not None:
        out["fp32"] = fp32 * 1e12
    return out


# Dense peak FLOP/s per device, keyed by the exact name torch.cuda.get_device_name reports, so a
# PCIe card never gets its SXM sibling's figure. Datasheets quote bf16/fp16 tensor-core rates
# "with sparsity": the dense figure is half of it. fp32 is the plain (non-tensor-core) rate, since
# torch leaves TF32 matmuls off by default and the engine does not turn them on. A precision a
# datasheet does not state is left out: the run then reports no MFU rather than a guess.
GPU_PEAKS: dict[str, dict[str, float]] = {
    # NVIDIA H100 Tensor Core GPU datasheet: SXM 1,979 / PCIe 1,513 / NVL 1,671 TFLOPS bf16*
    "NVIDIA H100 80GB HBM3": _peaks(fp32=67, bf16=989.5),
    "NVIDIA H100 PCIe": _peaks(fp32=51, bf16=756.5),
    "NVIDIA H100 NVL": _peaks(fp32=60, bf16=835.5),
    # NVIDIA H200 Tensor Core GPU datasheet: SXM as H100 SXM, NVL as H100 NVL
    "NVIDIA H200": _peaks(fp32=67, bf16=989.5),
    "NVIDIA H200 NVL": _peaks(fp32=60, bf16=835.5),
    # NVIDIA A100 Tensor Core GPU datasheet: 19.5 TFLOPS fp32, 312 TFLOPS bf16 dense, all forms
    "NVIDIA A100-SXM4-40GB": _peaks(fp32=19.5, bf16=312),
    "NVIDIA A100-SXM4-80GB": _peaks(fp32=19.5, bf16=312),
    "NVIDIA A100-PCIE-40GB": _peaks(fp32=19.5, bf16=312),
    "NVIDIA A100 80GB PCIe": _peaks(fp32=19.5, bf16=312),
    # NVIDIA L4 datasheet: 30.3 TFLOPS fp32, 242 TFLOPS bf16*
    "NVIDIA L4": _peaks(fp32=30.3, bf16=121),
    # NVIDIA L40S datasheet: 91.6 TFLOPS fp32, 362.05 TFLOPS bf16 dense (733*)
    "NVIDIA L40S": _peaks(fp32=91.6, bf16=362.05),
    # NVIDIA HGX B200 datasheet: 36 PFLOPS fp16/bf16* for 8 GPUs (fp32: not stated per GPU)
    "NVIDIA B200": _peaks(fp32=None, bf16=2250),
    # AMD Instinct MI300X data sheet: 163.4 TFLOPS fp32 vector, 1307.4 TFLOPS fp16/bf16 dense
    "AMD Instinct MI300X": _peaks(fp32=163.4, bf16=1307.4),
}


def flops_per_token(cfg: ModelConfig) -> float:
    """6N + 12·L·H·Q·T training FLOPs per token: 6N for the matmuls of forward and backward over
    the N non-embedding parameters (the output head included), 12·L·H·Q·T for attention scores.
    """
    n = count_params(cfg)["non_embedding"]
    head_dim = cfg.d_model // cfg.n_heads
    return 6.0 * n + 12.0 * cfg.n_layers * cfg.n_heads * head_dim * cfg.seq_len


def hardware_flops_per_token(cfg: ModelConfig, activation_checkpointing: str) -> float:
    """FLOPs the hardware executes per token, recomputation included (for HFU, PaLM app. B).

    Full checkpointing runs each block's forward twice: the blocks' forward share (a third of
    their training FLOPs) is added again; the output head is not recomputed. Selective
    checkpointing keeps the matmul and attention outputs and recomputes element-wise work
    only, whose FLOPs this count ignores, as the model FLOPs do.
    """
    total = flops_per_token(cfg)
    if activation_checkpointing != "full":
        return total
    head = 6.0 * cfg.vocab_size * cfg.d_model
    return total + (total - head) / 3.0


@dataclass(frozen=True)
class Peak:
    """One device's peak FLOP/s for MFU, where it came from, and why there is none."""

    flops: float | None  # None: unknown, so the run reports no MFU/HFU
    source: str | None  # "override", "table:<device name>", "measured-cpu"; None if unknown
    note: str | None = None  # why `flops` is None (goes to the result as `mfu_note`)


def override_flops(peak_tflops: float, peak_flops: float) -> float:
    """The user's peak in FLOP/s: `measure.peak_tflops` (TFLOP/s), else the older top-level
    `peak_flops` (FLOP/s); 0 when neither is set (validated to agree when both are)."""
    return peak_tflops * 1e12 if peak_tflops else peak_flops


def gpu_peak(device_name: str, precision: str, *, override: float = 0.0) -> Peak:
    """The peak of the GPU ``device_name`` (as torch.cuda.get_device_name gives it) at
    ``precision``: the override when set, else the table entry of exactly that name, else
    unknown (with a warning). Needs no GPU; never raises for an unknown device."""
    if override:
        return Peak(override, "override")
    peaks = GPU_PEAKS.get(device_name.strip(), {})
    if precision in peaks:
        return Peak(peaks[precision], f"table:{device_name.strip()}")
    note = (
        f"no peak FLOP/s known for GPU {device_name!r} at {precision}, so MFU is null; set "
        f"measure.peak_tflops=<dense TFLOP/s per device> (known devices: {sorted(GPU_PEAKS)})"
    )
    log.warning("%s", note)
    return Peak(None, None, note)
