"""``python -m engine.torchrun_rank NODE LOG_DIR CMD...``: one rank, as a torchrun agent's worker.

torchrun starts each worker in a session of its own and, killed itself, leaves it running; it
keeps no per-rank record of how its workers ended beyond the first failure. So each worker is
this small process, which

1. dies with its agent (Linux's parent-death signal; it checks that its parent is an agent),
2. sends the rank's output to ``LOG_DIR/rank<RANK>.log``, the local launcher's layout,
3. runs CMD as its child (which dies with this process, engine.orphan_guard) and writes how it
   ended to ``LOG_DIR/rank<RANK>.exit.json``: exit code or signal, pid (the kernel's OOM-killer
   records name pids), wall-clock time, node, and whether the agent stopped it — the evidence
   tuner/failures.py judges,
4. ends as its child ended.

Standard library only: it starts before, and beside, the rank's own ``import torch``.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.fileio import atomic_write_text

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_AGENT_MARKERS = (b"torch.distributed.run", b"torchrun")


def exit_record_path(log_dir: Path, rank: int) -> Path:
    return Path(log_dir) / f"rank{rank}.exit.json"


def _die_with_agent() -> None:
    """SIGKILL when the agent dies; refuse to run when the parent is not (or no longer) one."""
    if sys.platform != "linux":
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    try:
        cmdline = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        cmdline = b""
    if not any(marker in cmdline for marker in _AGENT_MARKERS):
        print("engine.torchrun_rank: the parent is not a torchrun agent", file=sys.stderr)
        sys.exit(1)


def main(argv: list[str]) -> None:
    node, log_dir, cmd = int(argv[0]), Path(argv[1]), argv[2:]
    _die_with_agent()
    rank = int(os.environ["RANK"])
    stopped = False

    def on_term(signum: int, _frame: object) -> None:
        # the agent ends its whole worker group (CMD too): note that the rank did not fail
        # by itself, and wait for CMD's end to record it
        nonlocal stopped
        stopped = True

    signal.signal(signal.SIGTERM, on_term)
    with (log_dir / f"rank{rank}.log").open("w") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "engine.orphan_guard", str(os.getpid()), *cmd],
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        code = child.wait()
    record = {
        "rank": rank,
        "node": node,
        "pid": child.pid,
        "returncode": code,
        "ended_at": time.time(),
        "stopped_by_agent": stopped,
    }
    atomic_write_text(exit_record_path(log_dir, rank), json.dumps(record))
    if code < 0:  # end by the same signal, so that the agent reports what the rank saw
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code if code >= 0 else 128 - code)


if __name__ == "__main__":
    main(sys.argv[1:])
