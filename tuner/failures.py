"""How one launch of the engine ended, judged from evidence in a fixed order.

A complete result with clean exits is a success whatever the logs say. Otherwise the rank that
failed first is the cause (its peers' "Connection reset" is a consequence), and what is known
of it decides the verdict, most direct evidence first: its exit status or signal, its last
error line, the kernel's OOM-killer record for its pid (when the kernel log is readable), then
the allocators' out-of-memory messages in its log. A bare SIGKILL is never taken for an
out-of-memory kill: anyone can send one.
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.launch import LaunchResult
from engine.runner import EXIT_DIVERGED

# what the allocators say when they fail: torch on CUDA and on CPU, glibc/errno, Python, C++
ALLOCATOR_OOM = re.compile(
    r"CUDA out of memory|CUDA error: out of memory|OutOfMemoryError"
    r"|DefaultCPUAllocator: can't allocate memory|Cannot allocate memory|\bENOMEM\b"
    r"|\[Errno 12\]|Error code 12\b|\bMemoryError\b|std::bad_alloc"
)
_ERROR_LINE = re.compile(r"^(\w+(\.\w+)*(Error|Exception)\b|Fatal Python error|terminate called).*")
# the kernel's OOM-killer lines: "Out of memory: Killed process 123 (python)" and
# "oom-kill:constraint=...,task=python,pid=123,uid=0"
_KILLED_PID = re.compile(r"Killed process (\d+)|oom-kill:.*\bpid=(\d+)")
# keys build_result writes into every successful result (engine/results.py)
_SUCCESS_KEYS = ("tokens_per_s", "step_time_s", "step_times_s", "peak_mem_bytes", "final_loss")
_DETAIL_MAX = 300
KMSG = Path("/dev/kmsg")


@dataclass(frozen=True)
class Verdict:
    reason: str | None  # None (success) | oom | timeout | nan | crash
    detail: str = ""
    rank: int | None = None  # the rank the verdict is about, where one is


def is_complete(result: dict[str, Any] | None) -> bool:
    """Whether rank 0 wrote the whole result of a finished run: status ok, the keys a
    successful result always has, and one loss per step it ran."""
    if result is None or result.get("status") != "ok":
        return False
    if any(key not in result for key in _SUCCESS_KEYS):
        return False
    try:
        steps = result["config"]["train"]["steps"] - result.get("first_step", 0)
    except (KeyError, TypeError):
        return False
    return isinstance(result.get("losses"), list) and len(result["losses"]) == steps


def last_error_line(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    for line in reversed(lines):
        if _ERROR_LINE.match(line.strip()):
            return line.strip()[:_DETAIL_MAX]
    return ""


def allocator_message(path: Path) -> str:
    """The last line of the log that reports a failed allocation, or ""."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    for line in reversed(lines):
        if ALLOCATOR_OOM.search(line):
            return line.strip()[:_DETAIL_MAX]
    return ""


def oom_killed_pids(kmsg: Path = KMSG) -> set[int] | None:
    """Pids the kernel's OOM killer ended, as far back as its log goes, or None when the log
    is unreadable (kernel.dmesg_restrict=1 without CAP_SYSLOG, a container without /dev/kmsg).
    Records are not filtered by time: the kernel's clock is not the launcher's, and a pid
    reused within the log's span is far less likely than a misjudged clock."""
    try:
        fd = os.open(kmsg, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    pids: set[int] = set()
    try:
        while True:
            try:
                record = os.read(fd, 8192).decode(errors="replace")
            except BlockingIOError:  # read to the end of the buffer
                break
            except BrokenPipeError:  # the record was overwritten while reading: skip it
                continue
            except OSError:
                return None
            if not record:
                break
            # "<prio>,<seq>,<usec since boot>,<flags>;<text>"
            text = record.partition(";")[2]
            for match in _KILLED_PID.finditer(text):
                pids.add(int(match.group(1) or match.group(2)))
    finally:
        os.close(fd)
    return pids


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _rank_failure(launched: LaunchResult, rank: int, kmsg: Path) -> Verdict:
    """The verdict on the rank that failed first, from its own evidence, most direct first."""
    code = launched.returncodes[rank]
    assert code is not None and code != 0, "only a rank that failed by itself is judged here"
    log_path = launched.log_paths[rank]
    # 1. its exit status or signal
    if code < 0:
        how = f"rank {rank} exited with signal {-code} ({_signal_name(code)})"
        if code == -signal.SIGKILL:
            how = f"rank {rank} was killed by signal 9 (SIGKILL)"
    else:
        how = f"rank {rank} exited with code {code}"
    # 2. its last error line
    error = last_error_line(log_path)
    # 3. the kernel's OOM killer, which ends its victims with SIGKILL
    if code == -signal.SIGKILL:
        killed = oom_killed_pids(kmsg)
        if killed is not None and rank < len(launched.pids) and launched.pids[rank] in killed:
            return Verdict("oom", f"rank {rank} was killed by the kernel's OOM killer", rank)
        if killed is None:
            how += " (the kernel log is unreadable: an OOM kill cannot be told apart)"
    # 4. an allocator's out-of-memory message
    alloc = allocator_message(log_path)
    if alloc:
        return Verdict("oom", f"rank {rank}: {alloc}", rank)
    if error and code > 0:
        return Verdict("crash", f"rank {rank}: {error}", rank)
    return Verdict("crash", f"{how}: {error}" if error else how, rank)


def classify(
    launched: LaunchResult, result: dict[str, Any] | None, *, kmsg: Path = KMSG
) -> Verdict:
    """The verdict on one launch, in this order: success, nan, timeout, then the first failed
    rank's own evidence (``_rank_failure``); whatever is left is a crash. ``kmsg``: the
    kernel's log, for its OOM-killer records."""
    codes = launched.returncodes
    if is_complete(result) and all(c in (0, -signal.SIGABRT) for c in codes):
        # finished and wrote all of its result; an abort during exit is not a failure
        return Verdict(None)
    if (result is not None and result.get("status") == "nan") or EXIT_DIVERGED in codes:
        return Verdict("nan", (result or {}).get("error", "loss diverged (NaN/inf)"))
    if launched.timed_out:
        return Verdict("timeout")
    first = launched.first_failed
    if first is not None:
        return _rank_failure(launched, first, kmsg)
    if result is None:
        return Verdict("crash", f"every rank exited ({codes}), but no result was written")
    return Verdict("crash", f"the result is incomplete (exit codes {codes})")
