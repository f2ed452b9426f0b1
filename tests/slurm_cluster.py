"""A real single-node Slurm for tests: munged, slurmctld and slurmd on 127.0.0.1, in a folder of
their own, started in about 2 s and stopped by pid. Needs root and Debian's ``slurm-wlm`` and
``munge`` packages (``apt-get install slurm-wlm munge``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from engine.launch import free_port
from tests.helpers import SESSION_MARKER, wait_until

DAEMONS = ("munged", "slurmctld", "slurmd", "srun", "scontrol", "sinfo", "runuser")
_CONF = """\
ClusterName=paratune-test
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
InactiveLimit=0
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def missing() -> str:
    """Why no Slurm can be started here ("" when one can)."""
    if os.geteuid() != 0:
        return "slurmd runs as root"
    absent = [d for d in DAEMONS if shutil.which(d) is None]
    return f"not installed: {absent} (apt-get install slurm-wlm munge)" if absent else ""


def _stop(pid_file: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout_s=10)


@contextlib.contextmanager
def single_node_slurm() -> Iterator[dict[str, str]]:
    """Start the cluster; yields the environment variables its clients need (SLURM_CONF)."""
    # the daemons are not the tests' processes: they do not carry the session's marker
    env = {k: v for k, v in os.environ.items() if k != SESSION_MARKER}
    d = Path(tempfile.mkdtemp(prefix="slurm-"))  # under /tmp: the munge user must reach it
    d.chmod(0o755)
    for sub in ("munge", "state", "spool"):
        (d / sub).mkdir()
    shutil.chown(d / "munge", "munge", "munge")
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))  # a key of this cluster's own
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    conf = d / "slurm.conf"
    conf.write_text(
        _CONF.format(d=d, ctld_port=free_port(), slurmd_port=free_port(), cpus=os.cpu_count() or 1)
    )
    env["SLURM_CONF"] = str(conf)
    run = lambda *cmd: subprocess.run(cmd, env=env, check=True, capture_output=True)  # noqa: E731
    t0 = time.monotonic()
    try:
        run(
            "runuser", "-u", "munge", "--", "munged", f"--key-file={key}",
            f"--socket={d}/munge/munge.socket", f"--pid-file={d}/munge/munged.pid",
            f"--log-file={d}/munge/munged.log", f"--seed-file={d}/munge/seed", "--force",
        )  # fmt: skip
        run("slurmctld", "-f", str(conf), "-i")
        run("slurmd", "-f", str(conf), "-N", "localhost")

        def idle() -> bool:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True)
            return out.stdout.strip() == b"idle"

        assert wait_until(idle, timeout_s=60), (d / "slurmctld.log").read_text()[-2000:]
        print(f"single-node Slurm ready in {time.monotonic() - t0:.1f}s")
        yield {"SLURM_CONF": str(conf)}
    finally:
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            _stop(d / pid_file)
        shutil.rmtree(d, ignore_errors=True)
