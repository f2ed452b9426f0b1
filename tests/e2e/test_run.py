"""`python -m tuner run` end to end: the result JSON's interface, and repeated launches."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import RESULT_KEYS, cli

pytestmark = pytest.mark.slow


def _run_tiny_dp2(tmp_path, *overrides: str) -> tuple[subprocess.CompletedProcess, dict]:
    """`tuner run` of the tiny model on 2 data-parallel ranks: its output and result JSON."""
    out = tmp_path / "run.json"
    base = ["model=tiny", "parallel.dp=2", "train.micro_batch=4", "train.global_batch=8"]
    proc = cli("run", *base, *overrides, f"run.out={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(out.read_text())


def test_run_writes_the_documented_json_and_merges_repeats(tmp_path):
    proc, r = _run_tiny_dp2(tmp_path, "train.steps=6", "measure.repeats=2")
    assert "tokens/s" in proc.stdout and "in 2 runs" in proc.stdout
    for key in RESULT_KEYS:
        assert key in r, key
    assert r["repeats"] == 2 and len(r["tokens_per_s_repeats"]) == 2
    low, high = r["tokens_per_s_ci"]
    assert low <= r["tokens_per_s"] <= high
    # the median over both runs' steps lies between the two runs' own medians
    assert min(r["tokens_per_s_repeats"]) <= r["tokens_per_s"] <= max(r["tokens_per_s_repeats"])
    assert len(r["losses"]) == 6 and r["config"]["parallel"]["dp"] == 2
    runs = list((tmp_path / "reports" / "runs").iterdir())
    assert len(runs) == 1 and {p.name for p in runs[0].iterdir()} >= {"repeat0", "repeat1"}
    # every figure is merged, none is silently the first launch's
    each = [json.loads((runs[0] / f"repeat{i}" / "result.json").read_text()) for i in (0, 1)]
    assert r["step_times_s"] == [e["step_times_s"] for e in each]
    assert r["peak_mem_bytes"] == max(e["peak_mem_bytes"] for e in each)
    assert r["tensor_peak_bytes"] == max(e["tensor_peak_bytes"] for e in each)
    for part, seconds in r["breakdown"].items():
        assert seconds == pytest.approx(sum(e["breakdown"][part] for e in each) / 2)
    assert r["comm_time_s"] == pytest.approx(sum(e["comm_time_s"] for e in each) / 2)
    assert r["hfu"] == pytest.approx(each[0]["hfu"] / each[0]["tokens_per_s"] * r["tokens_per_s"])
    kind = r["comm"]["all_reduce"]
    assert kind["algbw_gbps"] == pytest.approx(kind["bytes"] / kind["time_s"] / 1e9)


def test_unmeasured_figures_are_null_with_a_reason_not_zero(tmp_path):
    proc, r = _run_tiny_dp2(tmp_path, "train.steps=4", "measure.profile_steps=0")
    for key in ("comm_count", "comm_bytes", "comm_time_s", "comm", "comm_exposed_s"):
        assert r[key] is None, key
        assert "measure.profile_steps=0" in r["not_measured"][key]
    assert r["tensor_peak_bytes"] is None and r["mem_prediction_error"] is None
    assert r["mem_compared_bytes"] is None  # never compared with the whole-process peak
    assert r["timing_includes_profiler"] is False
    assert "communication/step     not measured: no profiled step" in proc.stdout
