"""``model=custom``: the user's own ``nn.Module``, from ``model.factory=pkg.module:function``.

Every rank imports the module and calls the function after seeding torch with ``train.seed``,
so every rank (and the single-process reference) starts from the same weights. The function
takes the run's model section (``ModelConfig``: vocab_size, seq_len, ...) if it has a
parameter, and returns the module, or a mapping with the module under ``"model"`` and any of
the ``Engine`` API's other arguments: ``tp_plan``, ``pp_split``, ``units`` (FSDP2 and
activation-checkpointing blocks) and ``loss_fn`` (see engine.recipe.ModuleRecipe).

Whatever goes wrong inside the user's code is raised as ``UserFactoryError`` naming the
factory, with the user's exception (and so their traceback) chained to it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping

import torch
from torch import nn

from engine.config import ModelConfig, RunConfig
from engine.recipe import ModuleRecipe

OPTIONAL = ("tp_plan", "pp_split", "units", "loss_fn")  # ModuleRecipe's keyword arguments


class UserFactoryError(RuntimeError):
    """The user's model factory failed (or returned something the engine cannot train)."""


def load_factory(spec: str) -> Callable:
    """The function ``spec`` ("pkg.module:function") names."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's import-time code, or a module that is not there
        raise UserFactoryError(
            f"model.factory={spec}: importing {module_name} failed: {type(err).__name__}: {err}"
        ) from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserFactoryError(
            f"model.factory={spec}: {module_name} has no function {attr!r}"
            f" (module file: {getattr(module, '__file__', '?')})"
        )
    return fn


def _call(fn: Callable, spec: str, model: ModelConfig):
    takes_config = bool(inspect.signature(fn).parameters)
    try:
        return fn(model) if takes_config else fn()
    except Exception as err:
        raise UserFactoryError(f"model.factory={spec} raised {type(err).__name__}: {err}") from err


def _unpack(made, spec: str) -> tuple[nn.Module, dict]:
    if isinstance(made, nn.Module):
        return made, {}
    if isinstance(made, Mapping) and isinstance(made.get("model"), nn.Module):
        extra = sorted(set(made) - {"model", *OPTIONAL})
        if extra:
            raise UserFactoryError(
                f"model.factory={spec} returned unknown key(s) {extra}; valid: "
                f"{['model', *OPTIONAL]}"
            )
        return made["model"], {k: made[k] for k in OPTIONAL if made.get(k) is not None}
    raise UserFactoryError(
        f"model.factory={spec} must return an nn.Module or a mapping with one under 'model' "
        f"(and optionally {list(OPTIONAL)}), but returned {type(made).__name__}"
    )


def factory_recipe(cfg: RunConfig) -> ModuleRecipe:
    """The recipe of the module ``cfg.model.factory`` builds, seeded with ``train.seed``."""
    spec = cfg.model.factory
    fn = load_factory(spec)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank and layout
    model, options = _unpack(_call(fn, spec, cfg.model), spec)
    recipe = ModuleRecipe(model, **options)
    recipe.n_params = sum(p.numel() for p in model.parameters())
    return recipe
