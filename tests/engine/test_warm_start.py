"""Ranks forked from the zygote behave as exec'd ranks do: same results, exit codes, logs,
environment, and nothing outlives the launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import torch

from engine.launch import engine_command, launch
from engine.warm_start import Zygote, forkable, shared
from tests.helpers import REPO, engine_pids, tiny_config, wait_until, write_config

PROBE = [sys.executable, "-m", "tests.rank_probe"]


def test_a_forked_run_computes_what_an_execd_run_does(tmp_path):
    cfg = tiny_config(parallel={"dp": 2}, train={"steps": 4})
    results = {}
    for arm, zygote in (("exec", None), ("fork", shared())):
        _, path = write_config(cfg, tmp_path / arm)
        res = launch(engine_command(path), nproc=2, log_dir=tmp_path / arm, timeout_s=300,
                     zygote=zygote)  # fmt: skip
        assert res.ok, res
        results[arm] = json.loads((tmp_path / arm / "result.json").read_text())
    torch.testing.assert_close(results["fork"]["losses"], results["exec"]["losses"], rtol=0, atol=0)
    log = (tmp_path / "fork" / "rank1.log").read_text()
    assert "[rank1]" in log  # each rank's own output went to its own log


def test_exit_codes_signals_and_errors_are_reported_as_subprocess_would(tmp_path):
    zygote = shared()
    for what, code in (("exit:0", 0), ("exit:3", 3), ("signal:11", -11), ("raise", 1)):
        res = launch([*PROBE, what], nproc=2, log_dir=tmp_path / what, timeout_s=60, zygote=zygote)
        assert res.returncodes == [code, code], (what, res)
    log = (tmp_path / "raise" / "rank0.log").read_text()
    assert "RuntimeError: the probe was asked to fail" in log
    first = json.loads((tmp_path / "exit:3" / "rank1.log").read_text().splitlines()[0])
    assert first == {"cwd": os.getcwd(), "rank": "1", "argv": ["exit:3"]}


def test_a_hung_rank_is_ended_by_the_timeout_with_its_session(tmp_path):
    before = engine_pids()
    res = launch([*PROBE, "sleep:600"], nproc=2, log_dir=tmp_path, timeout_s=3, zygote=shared())
    assert res.timed_out and res.returncodes == [None, None]
    assert wait_until(lambda: not (engine_pids() - before), timeout_s=10)


def test_only_python_dash_m_commands_are_forked():
    assert forkable([sys.executable, "-m", "engine", "c.json"]) == ("engine", ["c.json"])
    assert forkable([sys.executable, "-c", "pass"]) is None
    assert forkable(["/other/python", "-m", "engine"]) is None


LAUNCHER = """
import json, os, sys, time
from pathlib import Path
from engine.warm_start import Zygote
zygote = Zygote()
rank = zygote.start("tests.rank_probe", ["sleep:600"], env=dict(os.environ),
                    log=Path(sys.argv[1]) / "rank.log")
print(json.dumps({"zygote": zygote._proc.pid, "rank": rank.pid, "sid": os.getsid(rank.pid)}),
      flush=True)
time.sleep(600)
"""


def test_a_launcher_killed_with_sigkill_takes_the_zygote_and_its_ranks_along(tmp_path):
    """SIGKILL leaves the launcher no chance to clean up: the kernel's parent-death signals
    end the zygote, and through it the rank."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        pids = json.loads(proc.stdout.readline())
        assert pids["sid"] == pids["rank"]  # in its own session: killpg reaches all it starts
        assert pids["rank"] in engine_pids() and pids["zygote"] in engine_pids()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert wait_until(lambda: not ({pids["zygote"], pids["rank"]} & engine_pids()), timeout_s=10)


def test_a_dead_zygote_is_replaced_and_its_ranks_count_as_killed(tmp_path):
    zygote = Zygote()
    try:
        rank = zygote.start("tests.rank_probe", ["sleep:600"], env=dict(os.environ),
                            log=tmp_path / "rank.log")  # fmt: skip
        zygote._proc.kill()
        assert rank.wait(timeout=10) == -signal.SIGKILL
        assert not zygote.alive
    finally:
        zygote.close()
    assert shared().alive and shared() is shared()
