"""The launcher ends every process it started: on success, on a failed rank, on timeout; the
ranks listen on loopback only."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from engine import warm_start
from engine.launch import engine_command, free_port, launch, start_ranks
from tests.helpers import tiny_config, wait_until, write_config

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def test_timeout_kills_all_ranks(tmp_path):
    t0 = time.monotonic()
    res = launch(SLEEPER, nproc=2, log_dir=tmp_path, timeout_s=1.0)
    assert res.timed_out and not res.ok
    assert time.monotonic() - t0 < 15
    assert res.returncodes == [None, None]


def test_a_failed_rank_ends_its_peers(tmp_path):
    # rank 1 fails at once; rank 0 would wait for two minutes
    cmd = [
        sys.executable,
        "-c",
        "import os, sys, time\nif os.environ['RANK'] == '1': sys.exit(7)\ntime.sleep(120)",
    ]
    t0 = time.monotonic()
    res = launch(cmd, nproc=2, log_dir=tmp_path, timeout_s=100)
    assert not res.timed_out and not res.ok
    assert res.returncodes[1] == 7 and res.returncodes[0] is None
    assert time.monotonic() - t0 < 20


def test_ranks_get_torchrun_environment_on_loopback(tmp_path):
    cmd = [
        sys.executable,
        "-c",
        "import os; print('|'.join(os.environ[k] for k in "
        "('RANK','WORLD_SIZE','LOCAL_RANK','MASTER_ADDR','MASTER_PORT','GLOO_SOCKET_IFNAME')))",
    ]
    res = launch(cmd, nproc=3, log_dir=tmp_path, timeout_s=30)
    assert res.ok
    lines = [p.read_text().strip().split("|") for p in res.log_paths]
    assert [ln[0] for ln in lines] == ["0", "1", "2"]
    assert {ln[1] for ln in lines} == {"3"} and {ln[3] for ln in lines} == {"127.0.0.1"}
    assert len({ln[4] for ln in lines}) == 1 and {ln[5] for ln in lines} == {"lo"}


def _listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on, from /proc."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    except OSError:  # the process has ended
        return set()
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: TCP_LISTEN
                continue
            addr_hex, port_hex = fields[1].split(":")
            # /proc prints the address as 32-bit words in host (little-endian) byte order
            raw = b"".join(
                bytes.fromhex(addr_hex[i : i + 8])[::-1] for i in range(0, len(addr_hex), 8)
            )
            found.add((str(ipaddress.ip_address(raw)), int(port_hex, 16)))
    return found


def _is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.mark.parametrize("start", ["exec", "fork"])
def test_the_ranks_listen_on_loopback_only(tmp_path, start):
    # a two-rank run long enough to be looked at while it trains
    _, path = write_config(tiny_config(parallel={"dp": 2}, train={"steps": 2000}), tmp_path)
    port = free_port()
    zygote = warm_start.shared() if start == "fork" else None
    procs = start_ranks(engine_command(path), 2, port, tmp_path, zygote=zygote)
    seen: dict[int, set[tuple[str, int]]] = {0: set(), 1: set()}

    def look() -> bool:
        for rank, (proc, _) in enumerate(procs):
            seen[rank] |= _listening(proc.pid)
        # the rendezvous store on rank 0, and gloo's own listeners on both ranks
        store = any(p == port for _, p in seen[0])
        return store and len(seen[0]) > 1 and len(seen[1]) > 0

    try:
        assert wait_until(look, timeout_s=120, interval_s=0.2), (seen, port)
        deadline = time.monotonic() + 2.0  # and whatever opens next, while training starts
        while time.monotonic() < deadline:
            look()
            time.sleep(0.2)
        assert all(p.poll() is None for p, _ in procs), "a rank ended before it was inspected"
    finally:
        for proc, _ in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    outside = {rank: [a for a in addrs if not _is_loopback(a[0])] for rank, addrs in seen.items()}
    assert outside == {0: [], 1: []}, f"listening beyond loopback: {outside} (all: {seen})"
