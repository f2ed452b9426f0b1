"""A real PostgreSQL server for the tests: created in a temporary folder, listening on
127.0.0.1 at a free port, removed at teardown. Needs the server binaries (Debian:
``apt-get install postgresql``; .ci/run installs them); skips with the reason when absent."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.launch import free_port

USER = "paratune"  # the database role the tests connect as (trusted on loopback)


def _bin_dir() -> Path | None:
    """Debian keeps initdb and pg_ctl out of PATH, under /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts)
    return versions[-1].parent if versions else None


def _as_server_user() -> list[str]:
    """The server refuses to run as root: run it as the `postgres` account then."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` account to run the server as")
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg://paratune@127.0.0.1:PORT/postgres`` of a fresh server."""
    pytest.importorskip("psycopg", reason="psycopg missing: pip install -e '.[postgres]'")
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries not found (apt-get install postgresql)")
    as_user = _as_server_user()
    root = Path(tempfile.mkdtemp(prefix="paratune-pg-"))  # /tmp: the server account reaches it
    data = root / "data"
    if as_user:
        shutil.chown(root, user="postgres")
    port = free_port()

    def ctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        options = f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=200"
        started = ctl("-o", options, "-l", str(root / "server.log"), "-w", "start")
        assert started.returncode == 0, (root / "server.log").read_text()[-2000:]
        yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            ctl("-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)
