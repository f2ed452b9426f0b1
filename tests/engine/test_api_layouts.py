"""The layout contract through the public API: ``engine.Engine`` on the built-in GPT, fed the
runner's data, trains like the single-process reference and measures like the runner.

A representative subset of tests/engine/test_layouts.py (ZeRO-3, tensor + sequence
parallelism, an interleaved and a V-shaped pipeline), with the same tolerances and the same
checks of the figures; and fp16 under a pipeline, against the runner on the same layout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from engine.api import Engine, EngineConfig
from engine.config import RunConfig
from engine.data import SyntheticTokens
from engine.launch import launch
from tests.engine.test_layouts import LAYOUTS, STEPS, _run, assert_trains_like
from tests.helpers import REPO, run_engine, tiny_config

pytestmark = pytest.mark.slow
SUBSET = ["zero3-dp2", "tp2-sp", "pp2-interleaved_1f1b", "pp2-zbv_zero_bubble"]


def main(config: Path, out: Path) -> None:
    """One rank: train cfg's GPT through Engine on the runner's synthetic tokens."""
    cfg = RunConfig.from_json_file(config)
    engine = Engine(cfg.model, EngineConfig(cfg.parallel, cfg.train, cfg.measure, cfg.device))
    t = cfg.train
    data = SyntheticTokens(cfg.model.vocab_size, cfg.model.seq_len, t.seed, t.global_batch)
    for step in range(t.steps):
        rows = data.shard(step, dp_rank=engine.dp_rank, dp=engine.mesh.dp)  # (B/dp, T + 1)
        engine.train_batch((rows[:, :-1], rows[:, 1:]))
    result, params = engine.result(), engine.full_state()
    if result is not None:
        out.joinpath("result.json").write_text(json.dumps(result, allow_nan=True))
        torch.save(params, out / "params.pt")
    engine.close()


def _engine_run(tmp: Path, cfg: RunConfig) -> tuple[dict, dict]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(cfg.to_json())
    cmd = [sys.executable, "-m", __name__, str(tmp / "config.json"), str(tmp)]
    res = launch(cmd, nproc=cfg.parallel.n_ranks, log_dir=tmp, timeout_s=600)
    logs = "\n".join(p.read_text() for p in res.log_paths)
    assert res.ok, f"exit codes {res.returncodes}\n{logs[-4000:]}"
    return json.loads((tmp / "result.json").read_text()), torch.load(tmp / "params.pt")


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The runner, one process, the whole global batch in one micro-batch."""
    return _run(tmp_path_factory.mktemp("reference"), {}, {"micro_batch": 8})


@pytest.mark.parametrize("layout", SUBSET)
def test_engine_layout_equals_reference(reference, tmp_path, layout):
    parallel, train = LAYOUTS[layout]
    # the layout suite's run (tests/engine/test_layouts.py, ``_run``), through Engine
    cfg = tiny_config(
        parallel=parallel,
        train={"steps": STEPS, "global_batch": 8, "micro_batch": 2, **train},
        measure={"count_calls": True},
    )
    run = _engine_run(tmp_path, cfg)
    assert_trains_like(run, reference)
    assert sorted(run[0]) == sorted(reference[0])  # the runner's figures, every one


def test_engine_compiled_blocks_equal_reference_and_report_compile_time(reference, tmp_path):
    parallel, train = LAYOUTS["zero2-dp2"]
    cfg = tiny_config(
        parallel=parallel,
        train={"steps": STEPS, "global_batch": 8, "micro_batch": 2, "compile": "blocks", **train},
        measure={"count_calls": True},
    )
    run = _engine_run(tmp_path, cfg)
    assert_trains_like(run, reference)
    assert run[0]["compile_s"] > 0 == reference[0]["compile_s"]


def test_engine_fp16_pipeline_equals_runner(tmp_path):
    """fp16 loss scaling under a pipeline schedule: the runner's losses and scale."""
    cfg = tiny_config(
        parallel={"pp": 2, "pp_schedule": "interleaved_1f1b", "pp_virtual_stages": 2},
        train={"precision": "fp16", "steps": 4, "micro_batch": 2},
    )
    runner_result = run_engine(cfg, tmp_path / "runner")
    result, _ = _engine_run(tmp_path / "engine", cfg)
    # the same code on the same rank: equal, the slack only states the claim
    torch.testing.assert_close(result["losses"], runner_result["losses"], rtol=0, atol=1e-6)
    assert result["loss_scale"] == runner_result["loss_scale"]
    assert result["skipped_steps"] == runner_result["skipped_steps"] == 0


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
