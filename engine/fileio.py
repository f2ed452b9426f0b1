"""Files written whole or not at all: a reader never sees half a file, a crash leaves no trace.

Every writer of results, reports, exports and caches goes through here, so there is one naming
of unfinished writes (:func:`is_partial` recognises them, e.g. to clean up after a full disk).
Standard library only: the tuner's command line imports this without paying for torch.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

# a folder written under this prefix and renamed into place when complete (engine.checkpoint)
PARTIAL_DIR_PREFIX = ".tmp-"
# unfinished files: ".NAME.PID.HEX.tmp" (see temp_path); unfinished folders: ".tmp-*"
_PARTIAL = re.compile(rf"^{re.escape(PARTIAL_DIR_PREFIX)}.*|^\..+\.tmp$")


def is_partial(name: str) -> bool:
    """Whether a file or folder name is that of an unfinished write."""
    return _PARTIAL.match(name) is not None


def temp_path(path: Path) -> Path:
    """A fresh hidden name next to ``path``: same filesystem, so the final rename is atomic;
    the process id and a random part keep concurrent writers apart."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on success it is flushed to
    disk and renamed over ``path``, on any failure (a full disk, an interrupt) it is removed.

    An OSError about the temporary file is re-raised naming ``path``: the file the user knows.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and (err.filename is None or str(err.filename) == str(tmp)):
            err.filename = str(path)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` through :func:`replacing`.

    The file is created with mode 0666 less the umask, like any file the user's tools write."""
    with replacing(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)


def _fsync(path: Path) -> None:
    # the rename must not reach the disk before the content does (ext4 data=writeback, XFS)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
