"""Starts N ranks as separate processes on this machine (torchrun-style, single node).

Rendezvous is on 127.0.0.1 at a free port, and nothing the ranks open listens elsewhere: rank 0
binds the rendezvous store to loopback (engine.runtime), gloo and NCCL are held to ``lo``. Each rank
runs in its own process session so that a timeout or a failed peer ends every process it
started, and is killed by the kernel if its launcher dies first (Linux's parent-death signal,
set by engine.orphan_guard before it execs the rank):
a `kill -9` of a sweep leaves no rank behind. A port taken between choosing and binding it is
retried with another.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.runtime import cpu_threads
from engine.warm_start import ForkedRank, Zygote, forkable

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# after one rank fails, give the others this long to notice and exit by themselves
FAILURE_GRACE_S = 5.0
# how often ``launch`` calls its ``poll`` while the ranks run
POLL_S = 0.25
_PORT_IN_USE = ("address already in use", "eaddrinuse")
Rank = subprocess.Popen | ForkedRank  # what supervision needs: pid, poll, wait, returncode


@dataclass
class LaunchResult:
    returncodes: list[int | None]  # None: killed by the launcher after a timeout or failure
    timed_out: bool
    wall_s: float
    log_paths: list[Path]
    # seconds after the start at which each rank's own exit was seen (None: killed by the
    # launcher); the order in which ranks failed tells the cause from its consequences
    exit_s: list[float | None] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    stopped: bool = False  # ended by the launcher because ``poll`` asked it to

    @property
    def ok(self) -> bool:
        return not (self.timed_out or self.stopped) and all(rc == 0 for rc in self.returncodes)

    @property
    def first_failed(self) -> int | None:
        """The rank that failed first by itself (non-zero exit), or None; without exit times,
        the lowest such rank."""
        times = self.exit_s or [0.0] * len(self.returncodes)
        failed = [
            (t, rank)
            for rank, (rc, t) in enumerate(zip(self.returncodes, times, strict=True))
            if rc not in (None, 0) and t is not None
        ]
        return min(failed)[1] if failed else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def rank_env(
    *, rank: int, nproc: int, port: int, base: dict[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(
        MASTER_ADDR=LOOPBACK,
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(nproc),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(nproc),
        # keep gloo and NCCL on the loopback interface: a single-node run talks to itself only
        GLOO_SOCKET_IFNAME="lo",
        NCCL_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS=str(cpu_threads(nproc)),
        PYTHONUNBUFFERED="1",
    )
    return env


def _kill(proc: Rank) -> None:
    """End the rank's whole process session: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def start_ranks(
    cmd: Sequence[str], nproc: int, port: int, log_dir: Path, *, zygote: Zygote | None = None
) -> list[tuple[Rank, Path]]:
    """Start the ranks without waiting for them (``launch`` supervises them). With a
    ``zygote``, a ``python -m MODULE`` command is forked from it rather than exec'd."""
    procs: list[tuple[Rank, Path]] = []
    warm = forkable(list(cmd)) if zygote is not None else None
    for rank in range(nproc):
        path = log_dir / f"rank{rank}.log"
        if warm is not None:
            env = rank_env(rank=rank, nproc=nproc, port=port)
            procs.append((zygote.start(*warm, env=env, log=path), path))
            continue
        with path.open("w") as out:
            proc = subprocess.Popen(
                # engine.orphan_guard: the rank dies with this process, however it ends
                [sys.executable, "-m", "engine.orphan_guard", str(os.getpid()), *cmd],
                env=rank_env(rank=rank, nproc=nproc, port=port),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        procs.append((proc, path))
    return procs


def _watch(proc: Rank, exited: list[float | None], rank: int, start: float) -> None:
    """Wait for one rank and note when it ended, to the millisecond rather than the poll."""
    proc.wait()
    exited[rank] = time.monotonic() - start


def _supervise(
    procs: list[tuple[Rank, Path]],
    timeout_s: float,
    start: float,
    poll: Callable[[], bool] | None = None,
) -> tuple[list[int | None], list[float | None], bool]:
    """Wait for the ranks: (exit codes, seconds to each exit, timed out); ``poll`` returning
    True ends them as a timeout does."""
    exited: list[float | None] = [None] * len(procs)
    for rank, (p, _) in enumerate(procs):
        threading.Thread(target=_watch, args=(p, exited, rank, start), daemon=True).start()

    def seen() -> tuple[list[int | None], list[float | None]]:
        # a rank counts as ended once its watcher noted the time, so codes and times agree
        times = list(exited)
        return [p.returncode if t is not None else None for (p, _), t in zip(procs, times)], times

    failed_at: float | None = None
    polled = start
    try:
        while True:
            codes, times = seen()
            if all(t is not None for t in times):
                return codes, times, False
            now = time.monotonic()
            if failed_at is None and any(c not in (None, 0) for c in codes):
                failed_at = now
            timed_out = now - start > timeout_s
            stopped = False
            if poll is not None and now - polled >= POLL_S:
                polled, stopped = now, poll()
            if (
                timed_out
                or stopped
                or (failed_at is not None and now - failed_at > FAILURE_GRACE_S)
            ):
                for p, _ in procs:
                    _kill(p)
                # ranks the launcher had to kill report None: they did not end by themselves
                return codes, times, timed_out
            time.sleep(0.05)
    except BaseException:  # Ctrl-C or an error in the launcher: leave nothing running
        for p, _ in procs:
            _kill(p)
        raise


def _port_clash(paths: list[Path]) -> bool:
    for path in paths:
        text = path.read_text(errors="replace").lower()
        if any(marker in text for marker in _PORT_IN_USE):
            return True
    return False


class _Poll:
    """A caller's ``poll``, remembering whether it asked to stop."""

    def __init__(self, poll: Callable[[], bool]) -> None:
        self._poll, self.stopped = poll, False

    def poll(self) -> bool:
        self.stopped = self.stopped or bool(self._poll())
        return self.stopped


def launch(
    cmd: Sequence[str],
    *,
    nproc: int,
    log_dir: str | Path,
    timeout_s: float,
    attempts: int = 3,
    poll: Callable[[], bool] | None = None,
    zygote: Zygote | None = None,
) -> LaunchResult:
    """Run ``cmd`` as ``nproc`` ranks; logs go to ``log_dir/rank<i>.log``. ``poll``: called
    every POLL_S seconds while they run; when it returns True the ranks are ended. ``zygote``:
    fork a ``python -m MODULE`` command's ranks from it (engine.warm_start)."""
    if nproc < 1:
        raise ValueError(f"`nproc` must be >= 1, but got {nproc}.")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    watch = _Poll(poll) if poll is not None else None
    t0 = time.monotonic()
    for attempt in range(attempts):
        started = time.monotonic()
        procs = start_ranks(cmd, nproc, free_port(), log_dir, zygote=zygote)
        codes, times, timed_out = _supervise(
            procs, timeout_s - (started - t0), started, watch.poll if watch else None
        )
        stopped = watch is not None and watch.stopped
        paths = [path for _, path in procs]
        if timed_out or stopped or all(c == 0 for c in codes) or not _port_clash(paths):
            break
        log.warning("rendezvous port was taken; retrying (%d/%d)", attempt + 2, attempts)
    return LaunchResult(
        codes,
        timed_out,
        time.monotonic() - t0,
        paths,
        exit_s=times,
        pids=[p.pid for p, _ in procs],
        stopped=stopped,
    )


def engine_command(config_path: str | Path) -> list[str]:
    return [sys.executable, "-m", "engine", str(config_path)]
