"""Checkpoints: exact resumption, across layouts, after SIGKILL, past a damaged newest one;
damaged input refused."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal

import pytest
import torch

from engine.checkpoint import MANIFEST, complete_checkpoints
from engine.config import ModelConfig
from engine.export import export
from engine.launch import engine_command, free_port, start_ranks
from engine.model import GPT
from tests.helpers import launch_engine, run_engine, tiny_config, wait_until, write_config

pytestmark = pytest.mark.slow
ATOL = 1e-5
BASE = {"global_batch": 8, "warmup_steps": 1}


def _cfg(ckpt, steps, parallel=None, micro_batch=8, **checkpoint):
    return tiny_config(
        parallel=parallel or {},
        train={**BASE, "steps": steps, "micro_batch": micro_batch},
        measure={"profile_steps": 1},
        checkpoint={"dir": str(ckpt), **checkpoint},
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """8 steps in one process, never stopped: the reference every resumption must meet."""
    tmp = tmp_path_factory.mktemp("ref")
    cfg = tiny_config(
        train={**BASE, "steps": 8, "micro_batch": 8}, debug={"dump_params": str(tmp / "params.pt")}
    )
    return run_engine(cfg, tmp)["losses"], torch.load(tmp / "params.pt")


@pytest.mark.long  # three layouts in a row, each launched
def test_resume_across_a_chain_of_layouts(tmp_path, uninterrupted):
    """zero-3 at dp 4 -> tp 2 x dp 2 -> pp 2 -> one process. Each leg saves at an even step
    and runs one step past it, which the next leg (resuming from the save) must redo."""
    ref, _ = uninterrupted
    ckpt = tmp_path / "ckpt"
    legs = [({"dp": 4, "zero": 3}, 3), ({"dp": 2, "tp": 2}, 5), ({"pp": 2}, 7), ({}, 8)]
    for i, (parallel, steps) in enumerate(legs):
        mb = 8 if not parallel else 2
        cfg = _cfg(ckpt, steps, parallel, mb, every=2 if i < 3 else 0, resume=i > 0)
        out = run_engine(cfg, tmp_path / f"leg{i}")
        first = out["first_step"]
        assert first == 2 * i
        assert len(out["losses"]) == steps - first
        torch.testing.assert_close(out["losses"], ref[first:steps], rtol=0, atol=ATOL)
        assert (out["ckpt_load_s"] or 0) > 0 if i > 0 else out["ckpt_load_s"] is None
        assert (out["ckpt_save_s"] or 0) > 0 if i < 3 else out["ckpt_save_s"] is None


def test_killed_run_resumes_exactly(tmp_path, uninterrupted):
    ref, _ = uninterrupted
    ckpt = tmp_path / "ckpt"
    # a long 2-rank run, saving every 2 steps, killed with SIGKILL after its second save
    _, path = write_config(_cfg(ckpt, 400, {"dp": 2}, 4, every=2, keep=2), tmp_path / "killed")
    procs = start_ranks(engine_command(path), 2, free_port(), tmp_path / "killed")
    try:
        assert wait_until(lambda: len(complete_checkpoints(ckpt)) >= 2, timeout_s=120)
    finally:
        for proc, _ in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    steps = [s for s, _ in complete_checkpoints(ckpt)]
    assert len(steps) == 2 and steps[-1] % 2 == 0  # `keep` pruned the older ones
    out = run_engine(_cfg(ckpt, steps[-1] + 2, {"dp": 2}, 4, resume=True), tmp_path / "resumed")
    assert out["first_step"] == steps[-1] and steps[-1] + 2 <= len(ref)
    torch.testing.assert_close(out["losses"], ref[steps[-1] : steps[-1] + 2], rtol=0, atol=ATOL)


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, uninterrupted):
    """Checkpoints at steps 2 and 4, the newest then truncated: a 2-rank resume takes step 2,
    says which one and why, and continues exactly as the uninterrupted run."""
    ref, _ = uninterrupted
    ckpt = tmp_path / "ckpt"
    run_engine(_cfg(ckpt, 4, every=2, keep=2), tmp_path / "saved")
    (older_step, older), (_, newest) = complete_checkpoints(ckpt)
    data = next(newest.glob("*.distcp"))
    data.write_bytes(data.read_bytes()[:-100])
    res, logs = launch_engine(_cfg(ckpt, 6, {"dp": 2}, 4, resume=True), tmp_path / "resumed")
    assert res.ok, logs[-4000:]
    out = json.loads((tmp_path / "resumed" / "result.json").read_text())
    assert older_step == 2 and out["first_step"] == 2
    torch.testing.assert_close(out["losses"], ref[2:6], rtol=0, atol=ATOL)
    assert f"resuming from {older} (step 2), the newest checkpoint that verifies" in logs, logs
    assert f"checkpoint {newest} is damaged: {data.name}" in logs and "truncated" in logs


def test_export_is_plain_pytorch(tmp_path, zero3_checkpoint):
    ckpt, params = zero3_checkpoint
    out, step = export(ckpt, tmp_path / "model.pt")
    assert step == 4
    model = GPT(ModelConfig(**json.loads(out.with_name("model.pt.json").read_text())))
    model.load_state_dict(torch.load(out, weights_only=True))
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, params[name], rtol=0, atol=0)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _resume_error(tmp_path, ckpt, **model) -> str:
    cfg = tiny_config(
        model=model,
        train={**BASE, "steps": 6, "micro_batch": 8},
        checkpoint={"dir": str(ckpt), "resume": True},
    )
    res, logs = launch_engine(cfg, tmp_path / "resume")
    assert not res.ok
    return logs


@pytest.mark.parametrize("damage", ["truncate", "flip", "unpickle"])
def test_damaged_checkpoints_are_refused(tmp_path, zero3_checkpoint, damage):
    ckpt = _copy(zero3_checkpoint[0], tmp_path / "ckpt")
    folder = complete_checkpoints(ckpt)[-1][1]
    data = next(folder.glob("*.distcp"))
    if damage == "truncate":
        data.write_bytes(data.read_bytes()[:-100])
        expected = "truncated"
    elif damage == "flip":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(bytes(raw))
        expected = "fails its checksum"
    else:  # a metadata file that would run a command if unpickled, with a matching manifest
        (folder / ".metadata").write_bytes(pickle.dumps(os.system))
        manifest = json.loads((folder / MANIFEST).read_text())
        manifest["files"][".metadata"] = {
            "bytes": (folder / ".metadata").stat().st_size,
            "sha256": hashlib.sha256((folder / ".metadata").read_bytes()).hexdigest(),
        }
        (folder / MANIFEST).write_text(json.dumps(manifest))
        expected = "refusing to unpickle"
    logs = _resume_error(tmp_path, ckpt)
    assert expected in logs, logs[-2000:]


def test_other_model_shape_and_incomplete_checkpoints_are_refused(tmp_path, zero3_checkpoint):
    ckpt = _copy(zero3_checkpoint[0], tmp_path / "ckpt")
    logs = _resume_error(tmp_path, ckpt, d_model=64, n_heads=4, d_ff=256)
    assert "another model shape" in logs and "model.d_model: 128" in logs
    # a save that never finished (no manifest) does not count as a checkpoint
    (complete_checkpoints(ckpt)[-1][1] / MANIFEST).unlink()
    logs = _resume_error(tmp_path / "again", ckpt)
    assert "holds no complete checkpoint" in logs
