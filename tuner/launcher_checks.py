"""Checks of the launcher section as a whole, and how a trial's ranks spread over its nodes.

Value by value, the launcher's keys are checked by TUNER_RULES (tuner/config_checks.py); these
rules relate them to each other and to the launcher chosen, so that a key that would have no
effect, or a node command that cannot be formed, stops the command before anything runs.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import string
import sys
from pathlib import Path

from engine.config import ConfigError
from engine.validate_values import Rule, shown
from tuner.schema import LauncherConfig

LAUNCHERS = ("local", "torchrun", "slurm")
# keys each launcher reads beyond the common ones (timeout, ranks, memory)
_OWN_KEYS = {
    "local": (),
    "torchrun": ("nnodes", "nproc_per_node", "rdzv_endpoint", "node_command", "hosts"),
    "slurm": ("nnodes", "nproc_per_node", "srun_args"),
}
NODE_FIELDS = ("host", "node")  # placeholders of launcher.node_command
LAUNCHER_RULES: dict[str, Rule] = {
    "launcher.name": Rule("choice", choices=LAUNCHERS),
    "launcher.nnodes": Rule("int", 1, 2**16),
    "launcher.nproc_per_node": Rule("int", 0, 2**20),
    "launcher.rdzv_endpoint": Rule(
        "str",
        pattern=r"|[\w.-]+:\d{1,5}|\[[0-9a-fA-F:.]+\]:\d{1,5}",
        what="HOST:PORT (e.g. node1:29400), or '' for 127.0.0.1 and a free port",
    ),
    "launcher.node_command": Rule("str"),
    "launcher.hosts": Rule(
        "list",
        item=Rule("str", pattern=r"[\w.@-]{1,253}", what="a host name or address"),
        min_items=0,
    ),
    "launcher.srun_args": Rule(
        "list",
        item=Rule("str", pattern=r"-.+", what="an srun option (starting with '-')"),
        min_items=0,
    ),
}


def _default(name: str) -> object:
    return getattr(LauncherConfig(), name)


def check_launcher(launcher: LauncherConfig, *, out_dir: str) -> None:
    """The launcher's keys, together: none set that the chosen launcher ignores, an endpoint
    with a port, and a node command whose placeholders can be filled (and whose arguments,
    under ``out_dir``, pass through a remote shell unchanged)."""
    own = _OWN_KEYS[launcher.name]
    for f in dataclasses.fields(launcher):
        other = any(f.name in keys for keys in _OWN_KEYS.values())
        if other and f.name not in own and getattr(launcher, f.name) != _default(f.name):
            users = [n for n, keys in _OWN_KEYS.items() if f.name in keys]
            raise ConfigError(
                f"`launcher.{f.name}` has no effect with launcher={launcher.name}, but got "
                f"launcher.{f.name}={shown(getattr(launcher, f.name))}; valid: leave it unset, "
                f"or choose launcher={'|'.join(users)}."
            )
    if launcher.rdzv_endpoint:
        port = int(launcher.rdzv_endpoint.rsplit(":", 1)[1])
        if not 1 <= port <= 65535:
            raise ConfigError(
                f"`launcher.rdzv_endpoint` needs a port from 1 to 65535, but got "
                f"launcher.rdzv_endpoint={shown(launcher.rdzv_endpoint)}."
            )
    if launcher.name == "torchrun":
        _check_node_command(launcher)
        if launcher.node_command:
            _check_shell_safe(out_dir)


def _check_node_command(launcher: LauncherConfig) -> None:
    key = f"launcher.node_command={shown(launcher.node_command)}"
    try:
        names = {n for _, n, _, _ in string.Formatter().parse(launcher.node_command) if n}
        shlex.split(launcher.node_command)
    except ValueError as err:
        raise ConfigError(
            f"`launcher.node_command` cannot be read ({err}), got {key}; valid: a command "
            "such as 'ssh {host}' or 'srun --nodes=1 --ntasks=1 --relative={node}'."
        ) from None
    if names - set(NODE_FIELDS):
        raise ConfigError(
            f"`launcher.node_command` may hold {{host}} and {{node}} only, but got {key}."
        )
    others = launcher.nnodes - 1
    if "host" in names and len(launcher.hosts) != others:
        raise ConfigError(
            f"`launcher.node_command` names {{host}}, so launcher.hosts needs one host per node "
            f"after the first ({others} for launcher.nnodes={launcher.nnodes}), but got "
            f"launcher.hosts={shown(launcher.hosts)}."
        )
    if launcher.hosts and "host" not in names:
        raise ConfigError(
            f"`launcher.hosts` has no effect unless launcher.node_command names {{host}}, but "
            f"got launcher.hosts={shown(launcher.hosts)} with {key}; valid: e.g. "
            "launcher.node_command='ssh {host}'."
        )


def _check_shell_safe(out_dir: str) -> None:
    """ssh hands the agent's arguments to a shell on the other host, srun runs them as they
    are: both read them alike only when none needs quoting."""
    paths = {
        "sweep.out_dir": str(Path(out_dir).resolve()),
        "the Python executable": sys.executable,
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    for what, path in paths.items():
        if path and shlex.quote(path) != path:
            raise ConfigError(
                f"{what} ({path!r}) holds characters a remote shell would read differently, "
                "and launcher.node_command passes it to one; valid: a path of letters, digits "
                "and '/._+-@%=:,' only."
            )


def ranks_per_node(world: int, launcher: LauncherConfig) -> int:
    """How many of a layout's ``world`` ranks each node runs; ConfigError when they do not
    spread evenly over ``launcher.nnodes``."""
    nnodes, per_node = launcher.nnodes, launcher.nproc_per_node
    if per_node and per_node * nnodes != world:
        raise ConfigError(
            f"parallel.dp * parallel.tp * parallel.pp = {world} ranks, but launcher.nnodes * "
            f"launcher.nproc_per_node = {nnodes} * {per_node} = {nnodes * per_node}; valid: "
            f"layouts of {nnodes * per_node} ranks, or launcher.nproc_per_node=0 (spread evenly)."
        )
    if world % nnodes:
        raise ConfigError(
            f"parallel.dp * parallel.tp * parallel.pp = {world} ranks do not spread evenly over "
            f"launcher.nnodes={nnodes} nodes; valid: a multiple of {nnodes} ranks."
        )
    return world // nnodes
