"""Process-group set-up from torchrun-style environment variables, as one explicit object."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from engine import cpu_malloc, instrumented_group
from engine.config import ConfigError, RunConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Who this process is. ``initialized`` is False for a single process without a launcher."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str
    initialized: bool
    # collectives counted at the process-group API (measure.count_calls / debug.comm_delay_ms)
    call_counter: instrumented_group.CallCounter | None = None
    owns_group: bool = True  # False: joined a group the caller made, and the caller closes it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("`device` is 'cuda', but no CUDA device is available; valid: cpu.")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def cpu_threads(local_world_size: int) -> int:
    """Share the cores this process may use among the ranks on this machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, local_world_size))


def _loopback_store(
    *, rank: int, world_size: int, timeout: datetime.timedelta
) -> dist.TCPStore | None:
    """The rendezvous store, listening on MASTER_ADDR only when that is a loopback address.

    The store ``env://`` starts on rank 0 listens on every interface, whatever MASTER_ADDR says
    (MASTER_ADDR only tells the clients where to connect); a single-machine run must not be
    reachable from the network, so rank 0 binds the listening socket itself and hands it to
    the store. ``None``: leave the rendezvous to ``env://`` (another host's address, or
    torchrun's agent, which hosts the store itself).
    """
    addr = os.environ["MASTER_ADDR"]
    try:
        loopback = ipaddress.ip_address(addr).is_loopback
    except ValueError:  # a host name
        loopback = False
    if not loopback or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return None
    port = int(os.environ["MASTER_PORT"])
    if rank != 0:
        return dist.TCPStore(addr, port, world_size, is_master=False, timeout=timeout)
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # a port taken since the launcher chose it fails here with EADDRINUSE; the launcher
        # reads that from the log and retries with another port
        sock.bind((addr, port))
        sock.listen(world_size)
        # the store owns the descriptor from here on and closes it when it shuts down
        fd = sock.detach()
    return dist.TCPStore(
        addr, port, world_size, is_master=True, timeout=timeout, master_listen_fd=fd
    )


def init(cfg: RunConfig, *, timeout_s: float = 300.0) -> DistContext:
    """Join the process group described by RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, if any;
    a group the caller initialised already is joined as it is."""
    env = os.environ
    joined = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if joined else int(env.get("WORLD_SIZE", "1"))
    rank = dist.get_rank() if joined else int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", str(rank)))
    local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    if world != cfg.parallel.n_ranks:
        raise ConfigError(
            f"the launcher started {world} process(es), but parallel.dp * parallel.tp * "
            f"parallel.pp = {cfg.parallel.n_ranks}; start that many ranks."
        )
    device = resolve_device(cfg.device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    backend = str(dist.get_backend()) if joined else backend
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(cpu_threads(local_world))
        cpu_malloc.keep_freed_memory()
    instrumented = bool(cfg.debug.comm_delay_ms or cfg.measure.count_calls)
    if instrumented and device.type == "cuda":
        raise ConfigError(
            "`debug.comm_delay_ms` and `measure.count_calls` wrap gloo process groups and work "
            "on CPU only, but this run is on CUDA; set device=cpu or leave them unset."
        )
    if joined:
        if instrumented:
            raise ConfigError(
                "`debug.comm_delay_ms` and `measure.count_calls` wrap the process group when "
                "the engine creates it, but this process initialised it already; leave them "
                "unset, or let the engine join the group (no init_process_group beforehand)."
            )
        return DistContext(rank, world, local_rank, local_world, device, backend, True, None, False)
    initialized = "MASTER_ADDR" in env
    counter = None
    if initialized and instrumented:
        counter = instrumented_group.register(delay_s=cfg.debug.comm_delay_ms / 1000)
    if initialized:
        timeout = datetime.timedelta(seconds=timeout_s)
        dist.init_process_group(
            backend=instrumented_group.BACKEND if counter is not None else backend,
            store=_loopback_store(rank=rank, world_size=world, timeout=timeout),
            rank=rank,
            world_size=world,
            timeout=timeout,
            device_id=device if device.type == "cuda" else None,
        )
    return DistContext(rank, world, local_rank, local_world, device, backend, initialized, counter)


def close(ctx: DistContext) -> None:
    if ctx.owns_group and ctx.initialized and dist.is_initialized():
        # let every rank finish its last collectives before the group goes away; tearing it
        # down under a peer's in-flight operation was seen to abort gloo ranks at exit
        dist.barrier()
        dist.destroy_process_group()
