"""Helpers shared by the tests: real engine runs and real CLI processes, nothing mocked."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine import result_schema
from engine.config import RunConfig
from engine.launch import engine_command, launch

REPO = Path(__file__).resolve().parent.parent
# every key of a successful run's JSON (engine/result_schema.py declares them)
RESULT_KEYS = result_schema.names("ok")


def tiny_config(**sections: dict[str, Any]) -> RunConfig:
    """The tiny preset with dotted-section overrides, e.g. tiny_config(parallel={"dp": 2})."""
    cfg = RunConfig().to_dict()
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg[section].update(values)
        else:
            cfg[section] = values
    return RunConfig.from_dict(cfg)


def write_config(cfg: RunConfig, workdir: Path) -> tuple[RunConfig, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = RunConfig.from_dict({**cfg.to_dict(), "out": str(workdir / "result.json")})
    path = workdir / "config.json"
    path.write_text(cfg.to_json())
    return cfg, path


def launch_engine(cfg: RunConfig, workdir: Path, *, timeout_s: float = 240):
    """Launch the engine as cfg.parallel.n_ranks processes: (LaunchResult, all ranks' logs)."""
    cfg, path = write_config(cfg, workdir)
    res = launch(
        engine_command(path), nproc=cfg.parallel.n_ranks, log_dir=workdir, timeout_s=timeout_s
    )
    return res, "\n".join(p.read_text() for p in res.log_paths)


def run_engine(cfg: RunConfig, workdir: Path, *, timeout_s: float = 240) -> dict[str, Any]:
    """Launch the engine and return rank 0's result JSON; fail the test if the run failed."""
    res, logs = launch_engine(cfg, workdir, timeout_s=timeout_s)
    assert res.ok, f"engine failed: exit codes {res.returncodes}\n{logs[-4000:]}"
    return json.loads((workdir / "result.json").read_text())


def cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m tuner ARGS`` in ``cwd`` (outputs go to cwd/reports)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "tuner", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def cli_started(*args: str, cwd: Path) -> Iterator[subprocess.Popen]:
    """``python -m tuner ARGS`` running in the background (stderr piped); killed on the way out
    if it is still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuner", *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


# set for the whole test session (conftest) and inherited by every process the tests start,
# so that leftover processes are found even after their parent died, and nobody else's are
SESSION_MARKER = "PARATUNE_TEST_SESSION"


def engine_pids() -> set[int]:
    """Live processes started (directly or not) by this test session, the tests' own excepted:
    this process and its rank zygote (engine/warm_start.py), which lives as long as it does."""
    marker = f"{SESSION_MARKER}={os.environ.get(SESSION_MARKER, '')}".encode()
    own_zygote = [b"-m", b"engine.zygote", str(os.getpid()).encode()]
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # its ranks share its command line, but their parent is the zygote
        is_own_zygote = argv[1:4] == own_zygote and int(stat[1]) == os.getpid()
        if marker in env and stat[0] != "Z" and not is_own_zygote:
            pids.add(int(proc.name))
    return pids


def wait_until(predicate, timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
