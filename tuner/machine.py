"""The machine a sweep measures on, recorded with its study.

Throughput, memory and communication are facts about one machine and one software stack: a
study resumed on another host, other devices, another core count or another torch would mix
measurements that cannot be compared. The study keeps every machine that measured in it, each
trial names its machine, and a resume elsewhere is refused unless the user allows it.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# the fields that make measurements comparable; the rest describe the machine for the report
COMPARED = ("host", "devices", "cores", "gpus", "torch")


@dataclass(frozen=True)
class Machine:
    host: str
    devices: tuple[str, ...]  # GPU names, or the CPU's model name when there is no GPU
    cores: int  # cores this process may use (its affinity), which sets threads per rank
    gpus: int
    torch: str
    optuna: str
    python: str

    @property
    def id(self) -> str:
        """A short name for the comparable part, stored on each trial."""
        text = json.dumps([getattr(self, k) for k in COMPARED])
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def differences(self, other: dict[str, Any]) -> list[str]:
        """The comparable fields in which ``other`` (a stored record) differs from this one."""
        now = self.to_dict()
        return [f"{k}: {other.get(k)!r} -> {now[k]!r}" for k in COMPARED if other.get(k) != now[k]]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["devices"] = list(self.devices)  # as JSON storages give it back
        return data

    def describe(self) -> str:
        devices = ", ".join(self.devices) or "unknown device"
        return (
            f"{self.host} ({self.gpus} x {devices}" if self.gpus else f"{self.host} ({devices}"
        ) + f", {self.cores} cores, torch {self.torch})"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def current() -> Machine:
    """This machine. Imports torch (for the GPU names): call it when a sweep starts, not for
    ``--help`` or a config error."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    devices = tuple(torch.cuda.get_device_name(i) for i in range(gpus)) or (_cpu_model(),)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Machine(
        host=socket.gethostname(),
        devices=devices,
        cores=cores or 1,
        gpus=gpus,
        torch=torch.__version__,
        optuna=importlib.metadata.version("optuna"),
        python=platform.python_version(),
    )


def describe_record(record: dict[str, Any]) -> str:
    """``Machine.describe`` of a stored record (a dict from the study's attributes)."""
    fields = {k: record.get(k) for k in Machine.__dataclass_fields__}
    fields["devices"] = tuple(fields["devices"] or ())
    return Machine(**fields).describe()


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
