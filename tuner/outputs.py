"""Where a sweep writes: checked before the first trial, and written so a full disk leaves no trace.

A sweep that can only find out after an hour of measuring that its report folder is read-only, or
that its database driver is missing, wastes the hour. So every output location is opened (and a
folder test-written) up front, and each problem is one line naming the key, the value and why.
A disk that fills during the sweep stops it the same way (:func:`disk_full`), after the running
trial is recorded; temporary files of an interrupted write are removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url

from engine import fileio
from engine.config import ConfigError
from engine.units import KIB
from tuner import heartbeat

# errors that mean "this location takes no more bytes", not "this run is broken"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# how an engine rank's log says it: "OSError: [Errno 28] No space left on device: '/x'"
_NO_SPACE_LINE = re.compile(r"\[Errno (28|122)\]|No space left on device|Disk quota exceeded")
# free bytes below which a filesystem counts as full: less than one log line's page per rank
_NEARLY_FULL_BYTES = 64 * KIB
# Python module a database driver imports -> the package that provides it
_DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",  # also the project's `postgres` extra
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
}
_SCHEMA_ATTEMPTS = 5  # opening a new database while other workers create its schema
# PostgreSQL through psycopg 3 is the project's `postgres` extra
_POSTGRES_HINT = {
    "psycopg": " (the project's extra: `pip install -e '.[postgres]'`)",
    "psycopg2": ", or write postgresql+psycopg:// and `pip install -e '.[postgres]'`",
}
STORAGE_FORMS = (
    "'' (sqlite file in the sweep folder), journal:PATH, sqlite:///PATH, "
    "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB, mysql+pymysql://USER@HOST/DB"
)


class OutputError(ConfigError):
    """An output location that cannot be opened or written (exit status 2, like a config error:
    nothing was measured wrongly, the command can be rerun once the location is fixed)."""


def disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in _NO_SPACE


def disk_full_detail(text: str) -> bool:
    """Whether a failed launch's detail (its first failing rank's error line) is a full disk."""
    return bool(_NO_SPACE_LINE.search(text or ""))


def out_of_space(path: Path) -> bool:
    """Whether the filesystem holding ``path`` (or its nearest existing parent) is full: a
    rank that dies of a full disk often cannot even write its error into its log."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        fs = os.statvfs(path)
    except OSError:
        return False
    return fs.f_bavail * fs.f_frsize < _NEARLY_FULL_BYTES


def remove_partial(folder: Path) -> list[Path]:
    """Remove what interrupted writes left under ``folder``: the project's temporary files
    (``.NAME.*.tmp``) and folders (``.tmp-*``, a checkpoint being saved). Returns them."""
    found = [p for p in Path(folder).rglob(".*") if fileio.is_partial(p.name)]
    for path in sorted(found, key=lambda p: len(p.parts)):  # a folder before what it holds
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return found


def describe(err: OSError, where: Path | str | None = None) -> str:
    """``PATH: reason`` from an OSError, the path first: it is what the user has to fix
    (``where`` when the error names none: a failed write names no file)."""
    where = err.filename or where or "?"
    why = err.strerror or str(err)
    if err.errno in _NO_SPACE:
        why += " (disk full)"
    return f"{where}: {why}"


def check_dir(path: Path, *, key: str, value: str | None = None, create: bool = True) -> None:
    """Make sure ``path`` is a folder this process can write, by writing (and removing) a file.

    Permission bits do not answer it: root ignores them, and a read-only mount or a full disk
    only shows when something is written."""
    shown = f"{key}={value if value is not None else path}"
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        elif not path.is_dir():
            raise OutputError(f"{shown}: folder {path} does not exist; create it first.")
        probe = path / f".write-test.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"paratune write test\n")
                os.fsync(fd)  # tmpfs and most filesystems refuse a block only when it is written
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as err:
        raise OutputError(
            f"{shown} cannot be written ({describe(err)}); valid: a folder this user can create "
            "and write, with free space."
        ) from None


def check_file(path: Path, *, key: str) -> None:
    """Make sure ``path`` can be written later: its folder is writable and it is not a folder
    or a read-only file (``run.out``, written only after the run)."""
    check_dir(path.parent, key=key, value=str(path))
    if path.is_dir():
        raise OutputError(f"{key}={path} is a folder; valid: a file path.")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{key}={path} exists and is read-only; valid: a writable file path.")


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`engine.fileio.atomic_write_text`, a failure told as an :class:`OutputError`
    naming the file (a full disk leaves neither a half file nor the temporary one)."""
    try:
        fileio.atomic_write_text(path, text)
    except OSError as err:
        raise OutputError(f"cannot write {describe(err)}") from None


def open_storage(
    url: str, *, default: Path, out_key: str, heartbeat_s: int = 0
) -> optuna.storages.BaseStorage:
    """Open ``sweep.storage`` (see :data:`STORAGE_FORMS`); ``default`` is the sqlite file used
    for "" (in the folder named by ``out_key``). An RDB storage records running trials'
    heartbeats every ``heartbeat_s`` (0: none). Any problem is an :class:`OutputError`."""
    beats = {}
    if heartbeat_s:
        beats = {"heartbeat_interval": heartbeat_s, "grace_period": heartbeat.grace_s(heartbeat_s)}
    if not url:
        check_dir(default.parent, key=out_key)
        return _rdb(f"sqlite:///{default.resolve()}", shown=f"{out_key} (study.db)", **beats)
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        check_dir(path.parent, key="sweep.storage", value=url)
        try:
            with path.open("ab"):  # the journal is appended to: it must open for appending
                pass
        except OSError as err:
            raise OutputError(f"sweep.storage={url} cannot be written ({describe(err)}).") from None
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise OutputError(
            f"sweep.storage={url!r} is not a storage URL; valid: {STORAGE_FORMS}."
        ) from None
    shown = f"sweep.storage={parsed.render_as_string(hide_password=True)}"
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        check_dir(Path(parsed.database).parent, key="sweep.storage", value=url, create=False)
    return _rdb(url, shown=shown, **beats)


def check_rdb_url(url: str) -> None:
    """Refuse an RDB URL whose scheme is unknown or whose driver is missing, without
    connecting or creating anything (for commands that only read a study)."""
    try:
        shown = f"sweep.storage={make_url(url).render_as_string(hide_password=True)}"
    except sqlalchemy.exc.ArgumentError:
        raise OutputError(
            f"sweep.storage={url!r} is not a storage URL; valid: {STORAGE_FORMS}."
        ) from None
    _rdb(url, shown=shown, open_=lambda: sqlalchemy.create_engine(url).dispose())


def _rdb_storage(url: str, **beats: int) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage. Workers started together each create the schema of a new
    database; all but one then collide on it (a duplicate table or version row), and find it
    made when they try again."""
    for attempt in range(_SCHEMA_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is experimental in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **beats)
        except sqlalchemy.exc.DBAPIError as err:
            collided = isinstance(err, sqlalchemy.exc.IntegrityError) or "already exists" in str(
                err.orig
            )
            if not collided or attempt + 1 == _SCHEMA_ATTEMPTS:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _rdb(url: str, *, shown: str, open_: Callable[[], Any] | None = None, **beats: int) -> Any:
    """Open the RDB storage at ``url`` (or run ``open_``), each failure one line."""
    try:
        if open_:
            return open_()
        return _rdb_storage(url, **beats)
    except sqlalchemy.exc.NoSuchModuleError:
        scheme = url.split(":", 1)[0]
        raise OutputError(f"{shown}: unknown scheme {scheme!r}; valid: {STORAGE_FORMS}.") from None
    except ImportError as err:  # Optuna wraps the driver's ModuleNotFoundError; SQLAlchemy not
        module = getattr(err.__cause__, "name", None) or getattr(err, "name", None)
        module = module or "its database driver"
        package = _DRIVER_PACKAGES.get(module, module)
        raise OutputError(
            f"{shown}: the database driver {module!r} is not installed; "
            f"install it with `pip install '{package}'`{_POSTGRES_HINT.get(module, '')}."
        ) from None
    except sqlalchemy.exc.DBAPIError as err:
        why = str(err.orig).strip().splitlines()[0] if err.orig is not None else str(err)
        raise OutputError(f"{shown} cannot be opened: {why}") from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        raise OutputError(f"{shown} cannot be opened: {str(err).splitlines()[0]}") from None
