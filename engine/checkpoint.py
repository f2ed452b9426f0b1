"""Checkpoints through torch.distributed.checkpoint (DCP): atomic, verified, re-shardable.

A checkpoint is a folder ``<dir>/step_<N>/`` holding DCP's files and ``paratune.json`` (step,
data position, model shape, layout, and a SHA-256 of every file). It is written under a
temporary name and renamed once every rank's files and the manifest are on disk, so a crash
mid-save never leaves anything that looks complete. State is saved by fully qualified parameter
names, identical in every layout, and DCP re-shards on load: a checkpoint from one layout
resumes under any other.

Loading verifies the manifest's hashes before reading anything, and reads DCP's (pickled)
metadata with an unpickler that accepts only DCP's own metadata classes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.optim import ZeroRedundancyOptimizer

from engine.config import ConfigError, RunConfig

MANIFEST = "paratune.json"
FORMAT = 1


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: missing, damaged, or for another model."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def complete_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under ``root``, oldest first."""
    out = []
    for path in Path(root).glob("step_*"):
        if path.is_dir() and (path / MANIFEST).is_file():
            try:
                out.append((int(path.name.removeprefix("step_")), path))
            except ValueError:
                continue
    return sorted(out)


def read_manifest(path: Path, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of a checkpoint folder; with ``verify``, every file's hash is checked."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} has no readable {MANIFEST}: {err}") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: unknown format {manifest.get('format')!r}.")
    if verify:
        for name, expected in manifest["files"].items():
            file = path / name
            if not file.is_file():
                raise CheckpointError(f"checkpoint {path} is damaged: {name} is missing.")
            if file.stat().st_size != expected["bytes"]:
                raise CheckpointError(
                    f"checkpoint {path} is damaged: {name} has {file.stat().st_size} bytes, "
                    f"expected {expected['bytes']} (truncated?)."
                )
            if _sha256(file) != expected["sha256"]:
                raise CheckpointError(f"checkpoint {path} is damaged: {name} fails its checksum.")
    return manifest


def check_model(manifest: dict[str, Any], cfg: RunConfig, path: Path) -> None:
    saved, now = manifest["model"], asdict(cfg.model)
    shape = [k for k in now if k not in ("name", "init_std") and saved.get(k) != now[k]]
    if shape:
        diffs = ", ".join(
            f"model.{k}: {saved.get(k)!r} in the checkpoint, {now[k]!r} now" for k in shape
        )
        raise CheckpointError(f"checkpoint {path} is for another model shape ({diffs}).")
    for key in ("global_batch", "seed"):
        if manifest["train"][key] != getattr(cfg.train, key):
            raise CheckpointError(
                f"checkpoint {path} was trained with train.{key}={manifest['train'][key]}, but "
                f"train.{key}={getattr(cfg.train, key)} now: the data stream would not continue."
            )


class _SafeUnpickler(pickle.Unpickler):
    """Accepts only the classes DCP's metadata is made of."""

    _PREFIXES = ("torch.distributed.checkpoint.", "torch.distributed._shard.")
    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("pathlib", "PosixPath"),
        ("collections", "OrderedDict"),
        *(
            ("torch", name)
            for name in (
                "float32",
                "float64",
                "float16",
                "bfloat16",
                "int64",
                "int32",
                "int16",
                "int8",
                "uint8",
                "bool",
                "strided",
                "contiguous_format",
                "preserve_format",
            )
        ),
    }

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith(self._PREFIXES) or (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise CheckpointError(f"refusing to unpickle {module}.{name} from checkpoint metadata")


class SafeReader(dcp.FileSystemReader):
    """DCP's file reader, with the metadata read by ``_SafeUnpickler``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as f:
            metadata = _SafeUnpickler(f).load()
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp.metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _Container(nn.Module):
    """This rank's model parts under one root with the reference model's names."""

    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        layers = nn.ModuleDict()
        for module in modules:
            inner = getattr(module, "module", module)  # DDP keeps the model in .module
            for name, child in inner.named_children():
                if name == "layers":
                    for layer_id, block in child.items():
                        layers[layer_id] = block
                elif child is not None:
                    self.add_module(name, child)
            for name, param in inner.named_parameters(recurse=False):
                self.register_parameter(name, param)
        self.layers = layers


class Checkpointer:
    def __init__(
        self, cfg: RunConfig, modules: list[nn.Module], optimizer, precision, *, rank: int
    ) -> None:
        self.cfg, self.root = cfg, Path(cfg.checkpoint.dir)
        self.model = modules[0] if len(modules) == 1 else _Container(modules)
        self.optimizer, self.precision, self.rank = optimizer, precision, rank

    def _fqns(self) -> dict[nn.Parameter, str]:
        inner = getattr(self.model, "module", self.model)  # DDP keeps the model in .module
        return {p: name for name, p in inner.named_parameters()}

    def _optim_state(self) -> dict[str, Any]:
        """Adam state by parameter name. ZeRO-1 keeps it in a per-rank partition: each rank
        saves (and later loads) the names it owns; the union is the whole state."""
        if isinstance(self.optimizer, ZeroRedundancyOptimizer):
            names, inner = self._fqns(), self.optimizer.optim
            out = {}
            for group in inner.param_groups:
                for p in group["params"]:
                    st = inner.state.get(p) or {
                        "step": torch.zeros((), dtype=torch.float32),
                        "exp_avg": torch.zeros_like(p),
                        "exp_avg_sq": torch.zeros_like(p),
                    }
                    inner.state[p] = st
                    out[names[p]] = st
            return out
        optim = get_optimizer_state_dict(self.model, self.optimizer)
        self._param_groups = optim["param_groups"]
        return optim["state"]

    def _set_optim_state(self, state: dict[str, Any]) -> None:
        if isinstance(self.optimizer, ZeroRedundancyOptimizer):
            return  # _optim_state handed DCP the live state tensors: loaded in place
        set_optimizer_state_dict(
            self.model, self.optimizer, {"state": state, "param_groups": self._param_groups}
        )

    def _state(self) -> dict[str, Any]:
        """Tensors only: DCP would store anything else as pickled bytes, and unpickle them on
        load. Optimizer hyperparameters come from the run's config instead."""
        state = {
            "model": get_model_state_dict(self.model),
            "optim": self._optim_state(),
            "rng": torch.get_rng_state(),
        }
        if self.precision.scaler is not None:
            s = self.precision.scaler.state_dict()
            state["scaler"] = {k: torch.tensor(v, dtype=torch.float64) for k, v in s.items()}
        return state

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def save(self, step: int) -> float:
        """Save the state after ``step`` steps; returns the seconds it took (all ranks)."""
        t0 = time.perf_counter()
        final = self.root / f"step_{step:08d}"
        tmp = self.root / f".tmp-step_{step:08d}"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        self._barrier()
        dcp.save(self._state(), storage_writer=dcp.FileSystemWriter(tmp))
        self._barrier()
        if self.rank == 0:
            self._publish(tmp, final, step)
        self._barrier()
        return time.perf_counter() - t0

    def _publish(self, tmp: Path, final: Path, step: int) -> None:
        files = {
            p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        }
        manifest = {
            "format": FORMAT,
            "step": step,
            "samples": step * self.cfg.train.global_batch,
            "model": asdict(self.cfg.model),
            "train": {"global_batch": self.cfg.train.global_batch, "seed": self.cfg.train.seed},
            "layout": asdict(self.cfg.parallel),
            "precision": self.cfg.train.precision,
            "files": files,
        }
        with (tmp / MANIFEST).open("w") as f:  # written last: its presence marks completeness
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        for _, old in complete_checkpoints(self.root)[: -self.cfg.checkpoint.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(".tmp-step_*"):  # left by a crash in an earlier save
            shutil.rmtree(stale, ignore_errors=True)

    def load_latest(self) -> tuple[int, float]:
        """Restore the newest complete checkpoint; returns (its step, seconds taken)."""
        t0 = time.perf_counter()
        found = complete_checkpoints(self.root)
        if not found:
            raise CheckpointError(
                f"checkpoint.resume=true, but {self.root} holds no complete checkpoint."
            )
        _, path = found[-1]
        manifest = read_manifest(path)  # every rank verifies before anything is loaded
        check_model(manifest, self.cfg, path)
        state = self._state()
        dcp.load(state, storage_reader=SafeReader(path))
        set_model_state_dict(self.model, state["model"])
        self._set_optim_state(state["optim"])
        torch.set_rng_state(state["rng"])
        if self.precision.scaler is not None and "scaler" in state:
            self.precision.scaler.load_state_dict({k: float(v) for k, v in state["scaler"].items()})
        return manifest["step"], time.perf_counter() - t0
