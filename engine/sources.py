"""The recipe of a run's model (``model.source``): the built-in GPT, a transformers model built
from a configuration (engine/hf_model.py), or the user's own module (engine/user_model.py).
The last two are imported only when used: transformers is an optional extra."""

from __future__ import annotations

from engine.config import RunConfig
from engine.recipe import GPTRecipe, Recipe


def recipe_for(cfg: RunConfig) -> Recipe:
    source = cfg.model.source
    if source == "custom":
        from engine.user_model import factory_recipe

        return factory_recipe(cfg)
    if source == "hf":
        from engine.hf_model import hf_recipe

        return hf_recipe(cfg)
    return GPTRecipe(cfg.model, seed=cfg.train.seed)
