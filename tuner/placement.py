"""Where a worker's trials run on its machine: its cores, its GPUs, and who else is there.

Workers of one sweep on one machine each take their own cores (``launcher.cpus``) and GPUs
(``launcher.devices``). Taking means holding a lock file per core or GPU, under
``launcher.lock_dir`` (one folder per host, so a lock folder on a shared filesystem serves
many hosts); the kernel releases a lock when its holder dies, however it dies. A worker whose
cores another holds refuses to start, as measurements taken side by side disturb each other,
unless ``launcher.share_cpus``. A GPU is held only while a trial runs on it, and a trial waits
for its GPUs rather than start on one another trial holds.

Each trial records the machine's load when it starts (:func:`load_at_start`): a trial that
started on a busy machine (load above its cores) is flagged in the report.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from engine.config import ConfigError
from tuner.config import Loaded

log = logging.getLogger(__name__)

LOAD_ATTR = "load_1min"  # on each trial: the machine's 1-minute load average at its start
CORES_ATTR = "machine_cores"  # on each trial: the machine's cores, what "busy" compares with
GPU_WAIT_POLL_S = 0.5


def parse_ids(spec: str, *, key: str) -> list[int]:
    """ "0-3" or "0,2,4-5" -> sorted numbers; "" -> []."""
    ids: set[int] = set()
    for part in filter(None, str(spec).split(",")):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if first > last:
            raise ConfigError(f"`{key}` range {part!r} runs backwards; valid: LOW-HIGH, LOW<=HIGH.")
        ids.update(range(first, last + 1))
    return sorted(ids)


def lock_dir(cfg: Loaded) -> Path:
    base = Path(cfg.launcher.lock_dir or Path(cfg.sweep.out_dir) / ".locks")
    return base / socket.gethostname()


def _try_lock(path: Path, holder: str) -> int | None:
    """A held lock on ``path`` (its descriptor), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, holder.encode())
    return fd


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "another process"
    except OSError:
        return "another process"


def _release(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)  # closing the descriptor releases its lock


@contextlib.contextmanager
def worker_cores(cfg: Loaded) -> Iterator[list[int]]:
    """Pin this worker (and so every rank it starts) to ``launcher.cpus`` and hold those cores
    while the block runs; yields them. ConfigError: a core this process may not use, or one
    another worker holds (unless ``launcher.share_cpus``, or the worker was given its own GPUs
    and no cores)."""
    allowed = sorted(os.sched_getaffinity(0))
    cpus = parse_ids(cfg.launcher.cpus, key="launcher.cpus") or allowed
    outside = sorted(set(cpus) - set(allowed))
    if outside:
        raise ConfigError(
            f"launcher.cpus={cfg.launcher.cpus!r} names cores {outside} this process may not "
            f"use; valid: cores among {ranges(allowed)}."
        )
    shared = cfg.launcher.share_cpus or (cfg.launcher.devices and not cfg.launcher.cpus)
    held = [] if shared else _hold_cores(cfg, cpus)  # GPU workers share the cores feeding them
    os.sched_setaffinity(0, cpus)
    try:
        yield cpus
    finally:
        os.sched_setaffinity(0, allowed)
        _release(held)


def _hold_cores(cfg: Loaded, cpus: list[int]) -> list[int]:
    folder = lock_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    me = f"worker {socket.gethostname()}:{os.getpid()} of sweep {cfg.sweep.name}"
    held: list[int] = []
    for cpu in cpus:
        fd = _try_lock(folder / f"cpu{cpu}.lock", me)
        if fd is None:
            _release(held)
            raise ConfigError(
                f"launcher.cpus={cfg.launcher.cpus or ranges(cpus)!r}: core {cpu} is taken by "
                f"{_holder(folder / f'cpu{cpu}.lock')}; measurements on shared cores disturb "
                "each other. Give each worker on this machine its own cores (launcher.cpus="
                "0-1, launcher.cpus=2-3, ...), or set launcher.share_cpus=true."
            )
        held.append(fd)
    return held


def use_devices(cfg: Loaded) -> list[int] | None:
    """Make ``launcher.devices`` the GPUs this worker's ranks see (CUDA_VISIBLE_DEVICES, set
    before torch looks at CUDA); None when it is unset. Numbers index the GPUs this process
    was given already, when a scheduler set CUDA_VISIBLE_DEVICES."""
    devices = parse_ids(cfg.launcher.devices, key="launcher.devices")
    if not devices:
        return None
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        visible = [d.strip() for d in given.split(",") if d.strip()]
        if devices[-1] >= len(visible):
            raise ConfigError(
                f"launcher.devices={cfg.launcher.devices!r}, but this process sees only the "
                f"GPUs CUDA_VISIBLE_DEVICES={given!r}; valid: numbers below {len(visible)}."
            )
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(visible[d] for d in devices)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
    return devices


@contextlib.contextmanager
def holding_gpus(cfg: Loaded, n: int, *, what: str) -> Iterator[None]:
    """Hold the first ``n`` GPUs this worker's ranks see while the block runs, waiting while
    another trial holds one (rank i runs on the i-th visible GPU)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not n:
        yield
        return
    ids = visible.split(",")[:n] if visible else [str(i) for i in range(n)]
    folder = lock_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    me = f"{what} of worker {socket.gethostname()}:{os.getpid()}"
    held: list[int] = []
    announced = False
    try:
        for gpu in ids:
            path = folder / f"gpu{gpu.strip()}.lock"
            while (fd := _try_lock(path, me)) is None:
                if not announced:
                    log.warning("%s waits for GPU %s, held by %s", what, gpu, _holder(path))
                    announced = True
                time.sleep(GPU_WAIT_POLL_S)
            held.append(fd)
        yield
    finally:
        _release(held)


def load_at_start() -> dict[str, float | int]:
    """The machine's 1-minute load average and its cores, to store on a trial."""
    return {LOAD_ATTR: round(os.getloadavg()[0], 2), CORES_ATTR: os.cpu_count() or 1}


def busy(load: float | None, cores: int | None) -> bool:
    """A machine is busy when more processes want a core than it has (load above cores)."""
    return load is not None and cores is not None and load > cores


def ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    parts, start = [], None
    for i, n in enumerate(ids):
        if start is None:
            start = n
        if i + 1 == len(ids) or ids[i + 1] != n + 1:
            parts.append(f"{start}-{n}" if n != start else str(n))
            start = None
    return ",".join(parts)
