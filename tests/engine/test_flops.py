from __future__ import annotations

import json
import logging
import platform

import pytest
import torch

from engine import runtime
from engine.config import ConfigError, ModelConfig, RunConfig
from engine.metrics.cpu_peak import cpu_peak, measure_cpu_peak
from engine.metrics.flops import Peak, flops_per_token, gpu_peak, hardware_flops_per_token
from engine.model import count_params
from engine.results import build_result
from engine.runner import resolve_peak
from engine.train import train
from engine.validate import validate
from tests.helpers import run_engine, tiny_config


def test_flops_per_token_follows_palm():
    cfg = ModelConfig()
    n = count_params(cfg)["non_embedding"]
    # attention term: 12 * layers * heads * head_dim * seq_len
    assert flops_per_token(cfg) == 6 * n + 12 * 4 * 4 * 32 * 64
    # N excludes the token and position tables but keeps the output head
    assert n == count_params(cfg)["total"] - 256 * 128 - 64 * 128


def test_full_recomputation_adds_the_blocks_forward_to_hardware_flops():
    cfg = ModelConfig()
    model = flops_per_token(cfg)
    head = 6 * 256 * 128  # the output head is not recomputed
    assert hardware_flops_per_token(cfg, "none") == model
    assert hardware_flops_per_token(cfg, "selective") == model
    # forward is 1/3 of the 6N + 12LHQT of the blocks
    assert hardware_flops_per_token(cfg, "full") == pytest.approx(model + (model - head) / 3)


def test_measured_cpu_peak_bounds_a_real_matmul():
    peak = measure_cpu_peak(1, torch.float32, size=256, repeats=3)
    assert 1e8 < peak < 1e13  # a CPU core: between 0.1 GFLOP/s and 10 TFLOP/s


# --- the peak FLOP/s behind MFU ---------------------------------------------------------------


def test_gpu_peak_matches_the_exact_device_name():
    sxm = gpu_peak("NVIDIA H100 80GB HBM3", "bf16")
    pcie = gpu_peak("NVIDIA H100 PCIe", "bf16")
    assert sxm == Peak(989.5e12, "table:NVIDIA H100 80GB HBM3")
    assert pcie.flops == pytest.approx(756.5e12) and pcie.source == "table:NVIDIA H100 PCIe"
    assert gpu_peak("NVIDIA A100 80GB PCIe", "fp32").flops == pytest.approx(19.5e12)
    # a name that merely contains a known one is not that device
    assert gpu_peak("NVIDIA H100 PCIe-like card", "bf16").flops is None


def test_unknown_gpu_gives_no_peak_and_a_warning_never_an_error(caplog):
    with caplog.at_level(logging.WARNING, logger="engine.metrics.flops"):
        peak = gpu_peak("NVIDIA RTX PRO 6000 Blackwell", "bf16")
    assert (peak.flops, peak.source) == (None, None)
    assert "measure.peak_tflops" in peak.note and "RTX PRO 6000" in peak.note
    assert any("RTX PRO 6000" in r.getMessage() for r in caplog.records)
    # a known device at a precision its datasheet does not state is unknown too
    assert gpu_peak("NVIDIA B200", "fp32").flops is None
    assert gpu_peak("NVIDIA B200", "bf16").flops == pytest.approx(2250e12)


def test_override_wins_over_the_table_and_over_unknown_devices():
    assert gpu_peak("NVIDIA H100 80GB HBM3", "bf16", override=5e14) == Peak(5e14, "override")
    assert gpu_peak("Some Future GPU", "fp32", override=1e14) == Peak(1e14, "override")
    cfg = tiny_config(measure={"peak_tflops": 123.0})
    assert resolve_peak(cfg, torch.device("cpu")) == Peak(123e12, "override")
    # the older top-level key, in FLOP/s, still works
    old = RunConfig.from_dict({"peak_flops": 2e12})
    assert resolve_peak(validate(old), torch.device("cpu")) == Peak(2e12, "override")
    assert resolve_peak(tiny_config(), torch.device("cpu")) is None  # measured after training


@pytest.mark.parametrize(
    "section",
    [
        {"measure": {"peak_tflops": float("nan")}},
        {"measure": {"peak_tflops": float("inf")}},
        {"measure": {"peak_tflops": -1.0}},
        {"peak_flops": float("inf")},
        {"measure": {"peak_tflops": 100.0}, "peak_flops": 2e14},  # they disagree
    ],
)
def test_peak_override_must_be_finite_positive_and_agree(section):
    with pytest.raises(ConfigError, match="peak"):
        validate(tiny_config(**section))


def test_build_result_without_a_peak_has_null_mfu_and_hfu():
    cfg = validate(tiny_config(train={"steps": 3, "warmup_steps": 1}))
    ctx = runtime.init(cfg)
    try:
        record = train(cfg, ctx)
    finally:
        runtime.close(ctx)
    result = build_result(cfg, [record], peak=Peak(None, None, "unknown device"), device=ctx.device)
    assert result["status"] == "ok" and result["tokens_per_s"] > 0
    assert result["mfu"] is None and result["hfu"] is None
    assert result["not_measured"]["mfu"] == "unknown device"
    with_peak = build_result(cfg, [record], peak=Peak(1e12, "override"), device=ctx.device)
    assert with_peak["mfu"] > 0


def test_cpu_low_precision_peak_bounds_its_fp32_part(tmp_path, monkeypatch):
    """Autocast runs part of a bf16/fp16 step in fp32: the peak is at least the fp32 rate
    (a CPU without fp16 kernels multiplies fp16 far slower, and MFU exceeded 100%)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    machine = f"{platform.node()}|{platform.processor() or platform.machine()}|1"
    cache = {f"{machine}|fp32": 5e10, f"{machine}|fp16": 4e8, f"{machine}|bf16": 9e10}
    (tmp_path / "paratune").mkdir()
    (tmp_path / "paratune" / "cpu_peak_flops.json").write_text(json.dumps(cache))
    assert cpu_peak(1, "fp16") == 5e10
    assert cpu_peak(1, "bf16") == 9e10
    assert cpu_peak(1, "fp32") == 5e10


def test_cpu_peak_survives_a_cache_it_cannot_write(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("")  # the cache folder would have to live under a file
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    assert cpu_peak(1, "fp32") > 0


def test_a_real_cpu_run_reports_where_its_peak_came_from(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = tiny_config(train={"steps": 4, "warmup_steps": 1}, measure={"profile_steps": 1})
    measured = run_engine(cfg, tmp_path / "measured")
    assert measured["peak_flops_source"] == "measured-cpu" and measured["mfu_note"] is None
    assert measured["peak_flops_per_device"] > 0 and 0 < measured["mfu"] < 1
