"""Checkpoints through torch.distributed.checkpoint (DCP): atomic, verified, re-shardable.

A checkpoint is a folder ``<dir>/step_<N>/`` holding DCP's files and ``paratune.json`` (step,
data position, model shape, layout, and a SHA-256 of every file). It is written under a
temporary name and renamed once every rank's files and the manifest are on disk, so a crash
mid-save never leaves anything that looks complete. State is saved by fully qualified parameter
names, identical in every layout, and DCP re-shards on load: a checkpoint from one layout
resumes under any other.

Resuming takes the newest complete checkpoint whose files match the manifest, skipping (and
saying so) newer ones that are damaged. The manifest guards against damage, not against someone
who can write the folder; what protects loading from hostile content is in
``engine.checkpoint_verify``: metadata built from an exact allow-list, tensors only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

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

from engine.checkpoint_verify import (
    FORMAT,
    MANIFEST,
    CheckpointError,
    SafeReader,
    complete_checkpoints,
    file_sha256,
    newest_verified,
    read_manifest,
)
from engine.config import ModelConfig, RunConfig
from engine.fileio import PARTIAL_DIR_PREFIX

# re-exported: the folder format is part of this module's interface
__all__ = ["MANIFEST", "CheckpointError", "Checkpointer", "check_model", "complete_checkpoints"]

log = logging.getLogger(__name__)


def check_model(manifest: dict[str, Any], cfg: RunConfig, path: Path) -> None:
    saved, now = dict(manifest["model"]), asdict(cfg.model)
    # the padding multiple matters only through the rows it gives (checkpoints written before
    # vocabulary padding existed have none, i.e. a multiple of 1)
    saved["padded_vocab_size"] = ModelConfig(
        vocab_size=saved.get("vocab_size", 0), vocab_pad_multiple=saved.pop("vocab_pad_multiple", 1)
    ).padded_vocab_size
    now.pop("vocab_pad_multiple")
    now["padded_vocab_size"] = cfg.model.padded_vocab_size
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
        tmp = self.root / f"{PARTIAL_DIR_PREFIX}step_{step:08d}"
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
            p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
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
        # left by a crash in an earlier save
        for stale in self.root.glob(f"{PARTIAL_DIR_PREFIX}step_*"):
            shutil.rmtree(stale, ignore_errors=True)

    def _all_min(self, value: int) -> int:
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.precision.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def _choose(self) -> tuple[int, Path, dict[str, Any]]:
        """The checkpoint every rank resumes from: the newest that verifies on all of them.
        Ranks agree before anyone loads, so a rank that sees damage the others do not (a file
        system out of step) cannot leave them loading different steps, or waiting forever."""
        step, path, manifest, skipped, error = -1, None, None, [], None
        try:
            step, path, manifest, skipped = newest_verified(self.root)
        except CheckpointError as err:
            error = err
        agreed = self._all_min(step)
        if agreed != step and agreed >= 0:
            skipped.append(f"another rank could not verify step {step}.")
            path = dict(complete_checkpoints(self.root)).get(agreed)
            try:
                if path is None:
                    raise CheckpointError(f"{self.root} lacks step {agreed} on this rank.")
                manifest = read_manifest(path)
            except CheckpointError as err:
                error = err
        if self._all_min(0 if error else 1) == 0:
            why = error or "another rank found no checkpoint it can use; see its log."
            raise CheckpointError(f"checkpoint.resume=true, but {why}")
        if skipped and (self.rank == 0 or agreed != step):
            log.warning(
                "resuming from %s (step %d), the newest checkpoint that verifies; skipped: %s",
                path,
                agreed,
                " ".join(skipped),
            )
        elif self.rank == 0:
            log.info("resuming from %s (step %d)", path, agreed)
        return agreed, path, manifest

    def load_latest(self) -> tuple[int, float]:
        """Restore the newest complete checkpoint that verifies; returns (its step, seconds)."""
        t0 = time.perf_counter()
        _, path, manifest = self._choose()
        check_model(manifest, self.cfg, path)
        reader = SafeReader(path, manifest=manifest)  # refuses byte entries before any read
        state = self._state()
        dcp.load(state, storage_reader=reader)
        set_model_state_dict(self.model, state["model"])
        self._set_optim_state(state["optim"])
        torch.set_rng_state(state["rng"])
        if self.precision.scaler is not None and "scaler" in state:
            self.precision.scaler.load_state_dict({k: float(v) for k, v in state["scaler"].items()})
        return manifest["step"], time.perf_counter() - t0
