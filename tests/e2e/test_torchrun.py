"""launcher=torchrun with real torchrun agents: two on loopback stand in for two nodes."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from tests.helpers import cli, cli_started, engine_pids, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.long]
FAST = ["model=tiny", "train.steps=5", "train.warmup_steps=1"]
LAYOUT = ["parallel.dp=2", "train.micro_batch=4", "train.global_batch=8"]
TWO_NODES = ["launcher=torchrun", "launcher.nnodes=2"]  # 1 rank per node
LOSS_ATOL = 1e-5  # fp32 parity, as the layout suite (tests/engine/test_layouts.py)


def test_two_loopback_nodes_train_as_the_local_launcher_does(tmp_path):
    out = {}
    for name, launcher in (("local", []), ("torchrun", TWO_NODES)):
        out[name] = tmp_path / f"{name}.json"
        proc = cli("run", *FAST, *LAYOUT, *launcher, f"run.out={out[name]}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    local, nodes = (json.loads(out[n].read_text()) for n in ("local", "torchrun"))
    torch.testing.assert_close(nodes["losses"], local["losses"], rtol=0, atol=LOSS_ATOL)
    # each rank ran under its own node's agent, and wrote its log where the local launcher would
    run_dir = max((tmp_path / "reports" / "runs").iterdir())  # the later run: torchrun's
    records = [json.loads((run_dir / f"rank{r}.exit.json").read_text()) for r in (0, 1)]
    assert sorted(r["node"] for r in records) == [0, 1]
    assert all(r["returncode"] == 0 for r in records)
    assert {p.name for p in run_dir.glob("*.log")} >= {"agent0.log", "agent1.log", "rank1.log"}


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def _trial_processes(trial: str) -> dict[str, list[int]]:
    """This session's processes of one trial: agents (by node) and engine ranks."""
    found: dict[str, list[int]] = {}
    for pid in engine_pids():
        argv = _cmdline(pid)
        if not any(f"/trials/{trial}/" in a for a in argv):
            continue
        if "torch.distributed.run" in argv:
            node = argv[argv.index("engine.torchrun_rank") + 1]
            found.setdefault(f"agent{node}", []).append(pid)
        elif argv[1:3] == ["-m", "engine"]:
            found.setdefault("rank", []).append(pid)
        else:
            found.setdefault("other", []).append(pid)
    return found


def _in_collectives(pid: int) -> bool:
    """Past the rendezvous: the rank holds sockets (the store's and gloo's connections)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any("socket:" in os.readlink(fd) for fd in fds.iterdir())
    except OSError:
        return False


def test_a_killed_agent_fails_the_trial_on_both_nodes_and_the_sweep_goes_on(tmp_path):
    args = [
        *FAST,
        "train.steps=8",  # killed as soon as its ranks hold their connections
        # two loopback agents on 2 cores run slowly: the next trial must not time out
        "launcher.timeout_s=900",
        "sweep.name=agents",
        "sweep.n_trials=2",
        "sampler=bruteforce",
        "space.parallel.dp=[2]",
        "space.train.micro_batch=[2,4]",
        "~space.train.precision",
        *TWO_NODES,
    ]
    with cli_started("sweep", *args, cwd=tmp_path) as sweep:
        procs: dict[str, list[int]] = {}

        def training() -> bool:
            nonlocal procs
            procs = _trial_processes("0000")
            ranks = procs.get("rank", [])
            return len(ranks) == 2 and all(_in_collectives(p) for p in ranks) and "agent1" in procs

        assert wait_until(training, timeout_s=240), f"trial 0 did not start its ranks: {procs}"
        os.kill(procs["agent1"][0], signal.SIGKILL)
        # both nodes' agents and ranks end with the trial: none is left once it failed
        assert wait_until(lambda: not _trial_processes("0000"), timeout_s=20), procs
        _, err = sweep.communicate(timeout=600)
        assert sweep.returncode == 0, err
    with (tmp_path / "reports" / "agents" / "trials.csv").open() as f:
        rows = {int(r["number"]): r for r in csv.DictReader(f)}
    assert (rows[0]["state"], rows[0]["fail_reason"]) == ("FAIL", "crash")
    assert "node 1's torchrun agent was killed by signal 9" in rows[0]["fail_detail"]
    # the next trial ran on both nodes again
    assert rows[1]["state"] == "COMPLETE", (rows[1]["fail_reason"], rows[1]["fail_detail"])
