"""`python -m tuner plan`: a ranked, explained plan for a cluster paratune is not running on,
from the performance model alone (nothing is launched), and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from tests.helpers import cli

JSON_KEYS = {
    "dp",
    "tp",
    "pp",
    "zero",
    "pp_schedule",
    "micro_batch",
    "activation_checkpointing",
    "precision",
    "feasible",
    "reason",
    "predicted_tokens_per_s",
    "predicted_mfu",
    "predicted_step_time_s",
    "predicted_mem_bytes_per_gpu",
    "error_band",
}


def test_plan_ranks_every_layout_of_one_node(tmp_path):
    out = tmp_path / "plan.json"
    proc = cli(
        "plan",
        "model=llama-1b",
        "cluster=h100-sxm",
        "train.global_batch=64",
        "plan.top_k=5",
        f"plan.out={out}",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert set(rows[0]) >= JSON_KEYS
    feasible = [r for r in rows if r["feasible"]]
    assert feasible and all(r["dp"] * r["tp"] * r["pp"] == 8 for r in rows)
    speeds = [r["predicted_tokens_per_s"] for r in feasible]
    assert speeds == sorted(speeds, reverse=True)  # best first
    assert all(r["reason"] for r in rows if not r["feasible"])  # every refusal says why
    assert all(not r["feasible"] for r in rows[len(feasible) :])
    assert "python -m tuner run model=llama-1b" in proc.stdout  # how to verify the top
    assert (tmp_path / "reports" / "plans" / "llama-1b-h100-sxm-8.html").is_file()


def test_memory_bound_layouts_are_refused_with_their_prediction(tmp_path):
    out = tmp_path / "plan.json"
    proc = cli(
        "plan",
        "model=llama-7b",
        "cluster=a100-80gb",
        "cluster.mem_gib=16",
        "train.global_batch=64",
        f"plan.out={out}",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    too_big = [r for r in rows if r["reason"].startswith("predicted")]
    assert too_big and all(r["predicted_mem_bytes_per_gpu"] > 14 * 2**30 for r in too_big)
    assert all(r["predicted_mem_bytes_per_gpu"] <= 14 * 2**30 for r in rows if r["feasible"])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["plan", "cluster=nope"], ["cluster", "nope"]),
        (["plan", "cluster=h100-sxm", "cluster.nodes=0"], ["cluster.nodes", "0"]),
        (["plan", "cluster=h100-sxm", "+cluster.gpus=4"], ["cluster", "gpus"]),
        (["plan", "cluster=h100-sxm", "plan.top_k=0"], ["plan.top_k"]),
        (["plan", "cluster=h100-sxm", "plan.world_size=64"], ["plan.world_size", "64"]),
        (
            ["plan", "cluster=h100-sxm", "cluster.device_name=X", "+cluster.peak_tflops={}"],
            ["peak", "X"],
        ),
        (["calibrate", "calibrate.world_sizes=[1]"], ["calibrate.world_sizes"]),
    ],
)
def test_bad_plan_input_is_one_line(tmp_path, args, words):
    proc = cli(*args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error:"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    for word in words:
        assert word in proc.stderr
