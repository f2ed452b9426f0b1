"""Consolidate a checkpoint into one ordinary file that plain PyTorch loads.

    python -m tuner export checkpoint.dir=DIR export.out=model.pt
    model = GPT(ModelConfig(**json.load(open("model.pt.json"))))
    model.load_state_dict(torch.load("model.pt", weights_only=True))

A ``model=hf`` checkpoint exports under transformers' own names: the file loads into
``AutoModelForCausalLM.from_config(config)`` built from the same config.json.

Runs in one process, whatever layout wrote the checkpoint: DCP re-shards on load. Takes the newest
checkpoint that verifies (saying which newer ones were damaged), and refuses one whose metadata is
not plain tensors (see engine.checkpoint_verify) before reading any of its data.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from engine.checkpoint_verify import SafeReader, newest_verified
from engine.config import ModelConfig, RunConfig
from engine.fileio import atomic_write_text, replacing
from engine.model import GPT
from engine.sources import recipe_for

log = logging.getLogger(__name__)


def export(checkpoint_dir: str | Path, out: str | Path) -> tuple[Path, int]:
    """Write the model weights of the newest complete checkpoint that verifies to ``out``;
    returns (out, step)."""
    step, path, manifest, skipped = newest_verified(checkpoint_dir)
    if skipped:
        log.warning("exporting %s (step %d); skipped: %s", path, step, " ".join(skipped))
    reader = SafeReader(path, manifest=manifest)  # refuses byte entries before any read
    model_cfg = ModelConfig(**manifest["model"])
    if model_cfg.source == "gpt":
        with torch.device("cpu"):
            model = GPT(model_cfg)
    else:  # the module the run's source builds, whose weights the checkpoint replaces
        model = recipe_for(RunConfig(model=model_cfg)).part(0, 1)
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "loading in a single process": exactly the intent here
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, storage_reader=reader)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:
        torch.save(state["model"], tmp)
    atomic_write_text(f"{out}.json", json.dumps(manifest["model"], indent=1))
    return out, step
