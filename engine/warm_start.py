"""The launcher's side of engine.zygote: start ranks as forks of a warm process.

``Zygote.start`` returns a ``ForkedRank``, which answers the part of ``subprocess.Popen`` that
engine.launch supervises ranks with (``pid``, ``poll``, ``wait``, ``returncode``); the rank's
session is its own, so ``os.killpg(rank.pid, ...)`` ends it as it ends an exec'd rank. ``shared()``
is this process's zygote, started on first use and kept for the next trials; it ends when this
process ends.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ForkedRank:
    pid: int
    returncode: int | None = None
    _ended: threading.Event = field(default_factory=threading.Event, repr=False)

    def poll(self) -> int | None:
        return self.returncode if self._ended.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"rank {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def _end(self, code: int) -> None:
        self.returncode = code
        self._ended.set()


class Zygote:
    """One warm ``python -m engine.zygote`` and the ranks it forked for this process."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "engine.zygote", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # its own import errors surface in this process's stderr
        )
        self._lock = threading.Lock()  # one request at a time: replies come back in order
        self._ranks: dict[int, ForkedRank] = {}
        self._early: dict[int, int] = {}  # exits heard before their rank was registered
        self._pids: list[int] = []  # replies to requests, in order
        self._replied = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            message = json.loads(line)
            with self._replied:
                if "exit" in message:
                    pid, code = message["exit"], message["code"]
                    rank = self._ranks.pop(pid, None)
                    if rank is None:
                        self._early[pid] = code
                    else:
                        rank._end(code)
                elif "pid" in message:  # (the other message is "ready", after its imports)
                    self._pids.append(message["pid"])
                self._replied.notify_all()
        # the zygote is gone: the kernel killed every rank it had (parent-death signal)
        with self._replied:
            for rank in self._ranks.values():
                rank._end(-signal.SIGKILL)
            self._ranks.clear()
            self._replied.notify_all()

    def start(self, module: str, args: list[str], *, env: dict[str, str], log: Path) -> ForkedRank:
        """Fork ``python -m module args`` with ``env`` (its whole environment), output to
        ``log``, in this process's working directory."""
        request = {"module": module, "args": args, "env": env, "cwd": os.getcwd(), "log": str(log)}
        with self._lock:
            assert self._proc.stdin is not None
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            self._proc.stdin.flush()
            with self._replied:
                while not self._pids:
                    if not self._replied.wait(timeout=1.0) and not self.alive:
                        raise RuntimeError(f"the rank zygote exited ({self._proc.returncode})")
                pid = self._pids.pop(0)
                rank = ForkedRank(pid)
                if pid in self._early:
                    rank._end(self._early.pop(pid))
                else:
                    self._ranks[pid] = rank
        return rank

    def ranks_cpu_s(self) -> float:
        """CPU seconds (user + system) of the ranks this zygote forked and saw end (the
        kernel adds an ended child's time to its parent's)."""
        fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cutime, cstime = int(fields[13]), int(fields[14])  # stat(5): fields 16 and 17
        return (cutime + cstime) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        """End the zygote (ranks it still runs die with it)."""
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            with contextlib.suppress(OSError):  # its end of the pipe may be gone already
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


_shared: dict[int, Zygote] = {}  # by owning pid: a forked copy of this process starts its own


def shared() -> Zygote:
    """This process's zygote (started now if it has none, or if its zygote died)."""
    zygote = _shared.get(os.getpid())
    if zygote is None or not zygote.alive:
        zygote = _shared[os.getpid()] = Zygote()
        atexit.register(zygote.close)
    return zygote


def existing() -> Zygote | None:
    """This process's zygote, if it has started one."""
    zygote = _shared.get(os.getpid())
    return zygote if zygote is not None and zygote.alive else None


def forkable(cmd: list[str]) -> tuple[str, list[str]] | None:
    """(module, args) of a ``python -m module args`` command this interpreter would run, or
    None for any other command (those are exec'd as they are)."""
    if len(cmd) >= 3 and cmd[0] == sys.executable and cmd[1] == "-m":
        return cmd[2], list(cmd[3:])
    return None
