"""``python -m engine.orphan_guard PARENT_PID CMD...``: run CMD so that it dies with its launcher.

The launcher starts each rank through this: it asks the kernel for SIGKILL when the launching
process dies (Linux's parent-death signal, kept across exec), checks that the launcher is still
its parent (it may have died in between), then replaces itself with CMD. Done here, after the
launcher's fork, rather than in a ``preexec_fn`` there: a function run between fork and exec
makes Python fork by hand, and a Ctrl-C arriving during that fork was lost.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with(parent: int) -> None:
    """Ask the kernel for SIGKILL when ``parent`` (this process's parent) dies; exit now if it
    is gone already (nothing to run for)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(1)


def main(argv: list[str]) -> None:
    parent, cmd = int(argv[0]), argv[1:]
    die_with(parent)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
