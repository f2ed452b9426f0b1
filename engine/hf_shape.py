"""``model=hf``: a transformers ``config.json`` read as the engine's model shape, in plain
Python (no torch, no transformers), so that FLOPs per token, MFU, the memory model and the
planner describe the architecture the run trains; and where those formulas do not cover it.

The formulas describe a Llama-style decoder: RMSNorm, rotary positions, a gated MLP (three
matrices), grouped-query attention (``n_kv_heads``), no biases, an untied output head.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
from pathlib import Path
from typing import Any

from engine.config import ConfigError, ModelConfig, RunConfig

REPO = Path(__file__).resolve().parent.parent
LLAMA_STYLE = ("llama", "mistral", "qwen2")  # model types the formulas were checked against
_REQUIRED = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size")
_REQUIRED += ("vocab_size",)


def config_path(given: str) -> Path:
    """``model.hf_config`` as a config.json: a file or a folder holding one; relative paths
    are tried from here, then from the repository (the shipped conf/model/hf/*.json)."""
    for base in (Path.cwd(), REPO):
        path = base / given
        if path.is_dir():
            path = path / "config.json"
        if path.is_file():
            return path.resolve()
    raise ConfigError(
        f"`model.hf_config`={given} is not a config.json (nor a folder holding one); shipped: "
        f"{sorted(str(p.relative_to(REPO)) for p in (REPO / 'conf/model/hf').glob('*.json'))}."
    )


@functools.cache
def read_config(path: str) -> dict[str, Any]:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"`model.hf_config`={path} cannot be read as JSON: {err}.") from None
    missing = [k for k in _REQUIRED if not isinstance(raw.get(k), int)]
    if missing:
        raise ConfigError(
            f"`model.hf_config`={path} lacks the decoder's {missing}; paratune lays out "
            "decoder-only causal language models (model_type llama, mistral, qwen2, ...)."
        )
    return raw


def shape(raw: dict[str, Any]) -> dict[str, Any]:
    """The ModelConfig fields a transformers configuration fixes."""
    heads = raw["num_attention_heads"]
    return {
        "n_layers": raw["num_hidden_layers"],
        "n_heads": heads,
        "n_kv_heads": raw.get("num_key_value_heads") or heads,
        "d_model": raw["hidden_size"],
        "d_ff": raw["intermediate_size"],
        "vocab_size": raw["vocab_size"],
        "vocab_pad_multiple": 1,  # the module's embedding has exactly vocab_size rows
        "mlp": "swiglu",
        "norm": "rmsnorm",
        "position": "rope",
        "bias": False,
        "norm_eps": float(raw.get("rms_norm_eps", 1e-6)),
        "init_std": float(raw.get("initializer_range", 0.02)),
    }


def resolve_hf(m: ModelConfig) -> ModelConfig:
    """``m`` with its shape read from ``m.hf_config`` (made absolute, so every rank reads the
    same file); a shape key the user set to something else is refused, never ignored."""
    require_transformers()
    path = config_path(m.hf_config)
    fixed = shape(read_config(str(path)))
    default = ModelConfig()
    for key, value in fixed.items():
        given = getattr(m, key)
        if given != getattr(default, key) and given != value:
            raise ConfigError(
                f"`model.{key}`={given} is read from model.hf_config={m.hf_config} ({value}); "
                "leave it unset, or edit a copy of the config.json."
            )
    name = m.name
    if name == "hf":  # the preset's placeholder: name the run after the configuration
        name = f"hf-{path.parent.name if path.name == 'config.json' else path.stem}"
    return dataclasses.replace(m, **fixed, name=name, hf_config=str(path))


def formula_notes(m: ModelConfig) -> list[str]:
    """Where the model lies outside what the FLOPs, memory and traffic formulas cover (empty
    for the built-in GPT, which they describe)."""
    if m.source != "hf":
        return []
    raw = read_config(str(config_path(m.hf_config)))
    kind, notes = raw.get("model_type", "?"), []
    if kind not in LLAMA_STYLE:
        notes.append(f"model_type {kind}: the formulas assume a Llama-style decoder")
    if raw.get("tie_word_embeddings"):
        notes.append("tied embeddings: n_params and memory count the head's weights twice")
    head_dim = raw.get("head_dim")
    if head_dim and head_dim * m.n_heads != m.d_model:
        notes.append(f"head_dim {head_dim} x {m.n_heads} heads != hidden {m.d_model}: "
                     "attention projections are counted as hidden-wide")  # fmt: skip
    if kind == "qwen2" or raw.get("attention_bias") or raw.get("mlp_bias"):
        notes.append("linear biases are not counted (a few d_model per layer)")
    if raw.get("hidden_act", "silu") not in ("silu", "swish"):
        notes.append(f"activation {raw['hidden_act']}: counted as a gated MLP")
    window = raw.get("sliding_window")
    if window and raw.get("use_sliding_window", True) and window < m.seq_len:
        notes.append(f"sliding window {window} < seq_len: attention FLOPs count full attention")
    notes.append("activation memory: the built-in GPT's per-block count; transformers' "
                 "attention kernels may keep more")  # fmt: skip
    return notes


def check_hf_layout(cfg: RunConfig) -> None:
    """Layouts a transformers model cannot take here (a sweep prunes them)."""
    p = cfg.parallel
    if p.sp:
        raise ConfigError(
            "`parallel.sp=true` needs sequence-parallel norms and layouts that model=hf does "
            "not apply; valid with model=hf: parallel.sp=false."
        )
    raw = read_config(str(config_path(cfg.model.hf_config)))
    if p.pp > 1 and raw.get("tie_word_embeddings"):
        raise ConfigError(
            f"`parallel.pp`={p.pp} puts the embedding and the output head on different stages, "
            f"but model.hf_config={cfg.model.hf_config} ties them (tie_word_embeddings); valid: "
            "parallel.pp=1, or a copy of the config with tie_word_embeddings false."
        )


def require_transformers() -> None:
    """ConfigError naming the extra when transformers is not installed (checked without
    importing it)."""
    if importlib.util.find_spec("transformers") is None:
        raise ConfigError(
            "model=hf builds the model with transformers, which is not installed; install the "
            'extra: pip install -e ".[hf]"'
        )
