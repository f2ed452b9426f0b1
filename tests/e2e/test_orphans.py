"""No rank outlives the command that started it, however that command ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, wait_until

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc), ranks in their own sessions included."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_kill_9_of_a_sweep_leaves_no_rank(tmp_path):
    sweep = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuner",
            "sweep",
            "model=tiny",
            "sweep.name=orphans",
            "sweep.n_trials=1",
            "train.steps=400",  # long enough to be killed mid-trial
            "space.parallel.dp=[2]",
        ],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ranks: list[int] = []
    try:

        def started() -> bool:
            nonlocal ranks
            ranks = [c for c in _children(sweep.pid) if _alive(c)]
            return len(ranks) >= 2

        assert wait_until(started, timeout_s=120), "the trial's ranks did not start"
        time.sleep(1.0)  # past the rendezvous: the ranks are training
        sweep.send_signal(signal.SIGKILL)
        sweep.wait()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(_alive(p) for p in ranks):
            time.sleep(0.1)
        left = [p for p in ranks if _alive(p)]
        assert not left, f"ranks {left} outlived the sweep"
    finally:  # whatever the outcome, end what this test started
        for pid in [sweep.pid, *ranks]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        sweep.wait()
