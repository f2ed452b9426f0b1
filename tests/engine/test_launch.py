"""The launcher ends every process it started: on success, on a failed rank, on timeout."""

from __future__ import annotations

import sys
import time

from engine.launch import launch

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def test_timeout_kills_all_ranks(tmp_path):
    t0 = time.monotonic()
    res = launch(SLEEPER, nproc=2, log_dir=tmp_path, timeout_s=1.0)
    assert res.timed_out and not res.ok
    assert time.monotonic() - t0 < 15
    assert res.returncodes == [None, None]


def test_a_failed_rank_ends_its_peers(tmp_path):
    # rank 1 fails at once; rank 0 would wait for two minutes
    cmd = [
        sys.executable,
        "-c",
        "import os, sys, time\nif os.environ['RANK'] == '1': sys.exit(7)\ntime.sleep(120)",
    ]
    t0 = time.monotonic()
    res = launch(cmd, nproc=2, log_dir=tmp_path, timeout_s=100)
    assert not res.timed_out and not res.ok
    assert res.returncodes[1] == 7 and res.returncodes[0] is None
    assert time.monotonic() - t0 < 20


def test_ranks_get_torchrun_environment_on_loopback(tmp_path):
    cmd = [
        sys.executable,
        "-c",
        "import os; print('|'.join(os.environ[k] for k in "
        "('RANK','WORLD_SIZE','LOCAL_RANK','MASTER_ADDR','MASTER_PORT','GLOO_SOCKET_IFNAME')))",
    ]
    res = launch(cmd, nproc=3, log_dir=tmp_path, timeout_s=30)
    assert res.ok
    lines = [p.read_text().strip().split("|") for p in res.log_paths]
    assert [ln[0] for ln in lines] == ["0", "1", "2"]
    assert {ln[1] for ln in lines} == {"3"} and {ln[3] for ln in lines} == {"127.0.0.1"}
    assert len({ln[4] for ln in lines}) == 1 and {ln[5] for ln in lines} == {"lo"}
