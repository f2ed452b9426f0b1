"""A warm process that forks ranks: ``python -m engine.zygote LAUNCHER_PID``.

A rank started as a new interpreter spends ~2 s of CPU importing torch and the engine before it
does anything, and a sweep starts its ranks hundreds of times. The zygote imports them once and
forks each rank from itself. A rank is still a new process with its own address space and process
group (a crashed or leaking trial cannot reach the next one), runs in its own session, and dies
with the zygote, which dies with its launcher (parent-death signals on both links, and the
zygote also ends when its launcher closes the pipe).

Protocol, one JSON object per line. Launcher to zygote (stdin): ``{"module", "args", "env", "cwd",
"log"}``, run as ``python -m MODULE ARGS`` would run. Zygote to launcher (stdout): ``{"ready"}``
once its imports are done; ``{"pid"}`` for each request, once the rank is in its own session (so
that ending the session reaches it); ``{"exit": pid, "code": c}`` when a rank ends (negative:
killed by that signal, as subprocess reports it).

The zygote stays single-threaded: a fork copies only the calling thread, and a lock another
thread held would stay locked in the child forever.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import runpy
import select
import signal
import sys
import traceback
from typing import Any, NoReturn

from engine.orphan_guard import die_with

# what an engine rank imports on any layout (the parallel APIs are imported lazily by the layouts
# that use them, to spare a fresh interpreter; a warm one pays once for all of them)
PRELOAD = (
    "engine.__main__",
    "engine.runner",
    "torch.distributed.fsdp",
    "torch.distributed.tensor",
    "torch.distributed.pipelining",
)
_PR_SET_NAME = 15  # linux/prctl.h


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()  # before any fork, too: a child must not inherit unwritten replies


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _reply({"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def _name(rank: str) -> None:
    """Show the rank in ps/top (comm), since its command line is the zygote's."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(_PR_SET_NAME, f"rank{rank}".encode()[:15], 0, 0, 0)


def _rank(request: dict[str, Any], ready: int, zygote: int, close: list[int]) -> NoReturn:
    """In the forked child: become the rank a fresh ``python -m MODULE ARGS`` would be."""
    code = 1
    try:
        os.setsid()
        die_with(zygote)
        for fd in close:
            os.close(fd)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        # line-buffered: a rank killed on a timeout leaves its last lines in the log
        sys.stdout = open(1, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()  # siblings forked from one zygote would share its Python random state
        _name(request["env"].get("RANK", ""))
        os.write(ready, b"1")
        os.close(ready)
        sys.path[0] = request["cwd"]  # as `python -m` puts its working directory first
        sys.argv = [request["module"], *request["args"]]
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # exiting anyway: nowhere left to report to
                stream.flush()
        os._exit(code)


def _fork(request: dict[str, Any], wakeup: list[int]) -> None:
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        _rank(request, ready_w, zygote=os.getppid(), close=wakeup)
    os.close(ready_w)
    os.read(ready_r, 1)  # the rank is in its own session (or failed before: its exit follows)
    os.close(ready_r)
    _reply({"pid": pid})


def serve(launcher: int) -> None:
    die_with(launcher)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's: it ends the ranks
    for name in PRELOAD:
        importlib.import_module(name)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that the wakeup fd hears it
    _reply({"ready": True})
    pending = b""
    while True:
        readable, _, _ = select.select([0, wake_r], [], [])
        if wake_r in readable:
            while True:
                try:
                    if not os.read(wake_r, 512):
                        break
                except BlockingIOError:
                    break
            _reap()
        if 0 in readable:
            chunk = os.read(0, 1 << 16)
            if not chunk:  # the launcher closed the pipe or died: the ranks die with us
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                _fork(json.loads(line), [wake_r, wake_w])


if __name__ == "__main__":
    serve(int(sys.argv[1]))
