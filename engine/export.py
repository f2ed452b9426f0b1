"""Consolidate a checkpoint into one ordinary file that plain PyTorch loads.

    python -m tuner export checkpoint.dir=DIR export.out=model.pt
    model = GPT(ModelConfig(**json.load(open("model.pt.json"))))
    model.load_state_dict(torch.load("model.pt", weights_only=True))

Runs in one process, whatever layout wrote the checkpoint: DCP re-shards on load.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from engine.checkpoint import CheckpointError, SafeReader, complete_checkpoints, read_manifest
from engine.config import ModelConfig
from engine.model import GPT


def export(checkpoint_dir: str | Path, out: str | Path) -> tuple[Path, int]:
    """Write the newest complete checkpoint's model weights to ``out``; returns (out, step)."""
    found = complete_checkpoints(checkpoint_dir)
    if not found:
        raise CheckpointError(f"{checkpoint_dir} holds no complete checkpoint to export.")
    step, path = found[-1]
    manifest = read_manifest(path)
    model_cfg = ModelConfig(**manifest["model"])
    with torch.device("cpu"):
        model = GPT(model_cfg)
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "loading in a single process": exactly the intent here
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, storage_reader=SafeReader(path))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    torch.save(state["model"], tmp)
    os.replace(tmp, out)
    Path(f"{out}.json").write_text(json.dumps(manifest["model"], indent=1))
    return out, step
