"""Model sources: ``model=custom`` (the user's factory) and ``model=hf`` (a transformers
configuration): how each is checked, built and reported, before and after launch."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from engine.config import ConfigError
from engine.hf_shape import formula_notes
from engine.shapes import count_params
from engine.user_model import UserFactoryError, factory_recipe
from engine.validate import validate
from tests.helpers import cli, tiny_config

FACTORIES = "tests.engine.factories"


def custom(name: str, **sections):
    model = {"source": "custom", "factory": f"{FACTORIES}:{name}", **sections.pop("model", {})}
    return tiny_config(model=model, **sections)


def test_a_factory_builds_the_same_weights_on_every_call():
    a, b = (factory_recipe(custom("tiny_lm")).model for _ in range(2))
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    other = factory_recipe(custom("tiny_lm", train={"seed": 1})).model
    assert not torch.equal(other.head.weight, a.head.weight)


def test_a_factory_may_return_the_engine_api_arguments():
    recipe = factory_recipe(custom("with_units"))
    assert recipe.units == list(recipe.model.blocks)
    assert recipe.n_params == sum(p.numel() for p in recipe.model.parameters())


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("broken", ["broken raised ValueError: no model for vocab 256"]),
        ("not_a_module", ["must return an nn.Module", "str"]),
        ("unknown_keys", ["tp_plna"]),
        ("absent", ["has no function 'absent'"]),
    ],
)
def test_a_failing_factory_is_the_users_error_naming_it(name, words):
    with pytest.raises(UserFactoryError) as err:
        factory_recipe(custom(name))
    assert f"model.factory={FACTORIES}:{name}" in str(err.value)
    for word in words:
        assert word in str(err.value)
    if name == "broken":  # the user's traceback is chained to it
        assert isinstance(err.value.__cause__, ValueError)


def test_an_unimportable_factory_module_is_reported():
    cfg = tiny_config(model={"source": "custom", "factory": "no_such_pkg.models:build"})
    with pytest.raises(UserFactoryError, match=r"importing no_such_pkg\.models failed"):
        factory_recipe(cfg)


@pytest.mark.parametrize(
    ("model", "words"),
    [
        ({"source": "custom"}, ["model=custom needs `model.factory`"]),
        ({"source": "custom", "factory": "not a spec"}, ["model.factory", "pkg.module:function"]),
        ({"factory": f"{FACTORIES}:tiny_lm"}, ["read only with model=custom"]),
        ({"hf_config": "x.json"}, ["read only with model=hf"]),
        ({"source": "hf"}, ["model=hf needs `model.hf_config`"]),
        ({"source": "hf", "hf_config": "nowhere.json"}, ["nowhere.json", "tiny-llama.json"]),
        ({"n_kv_heads": 2}, ["model.n_kv_heads", "model=hf"]),
        (
            {"source": "hf", "hf_config": "conf/model/hf/tiny-llama.json", "n_layers": 7},
            ["model.n_layers", "read from model.hf_config"],
        ),
    ],
)
def test_model_source_settings_are_checked_before_launch(model, words):
    with pytest.raises(ConfigError) as err:
        validate(tiny_config(model=model))
    for word in words:
        assert word in str(err.value)


def hf(config: str = "tiny-llama", **sections):
    model = {"source": "hf", "hf_config": f"conf/model/hf/{config}.json", "name": "hf"}
    return tiny_config(model={**model, **sections.pop("model", {})}, **sections)


@pytest.mark.parametrize("config", ["llama-3-8b", "qwen2.5-7b", "mistral-7b"])
def test_shipped_configurations_have_the_published_sizes(config):
    m = validate(hf(config, model={"seq_len": 4096})).model
    billions = count_params(m)["total"] / 1e9
    # the published sizes: 8.03B, 7.62B, 7.25B (Qwen2.5's q/k/v biases aside)
    published = {"llama-3-8b": 8.03, "qwen2.5-7b": 7.62, "mistral-7b": 7.25}[config]
    assert billions == pytest.approx(published, abs=0.01)
    assert m.name == f"hf-{config}" and m.kv_heads < m.n_heads


def test_formula_notes_name_what_the_formulas_leave_out():
    assert formula_notes(tiny_config().model) == []
    qwen = validate(hf("qwen2.5-7b")).model
    assert any("biases" in n for n in formula_notes(qwen))
    llama = validate(hf("llama-3-8b")).model
    assert not any("biases" in n or "tied" in n for n in formula_notes(llama))


def test_hf_layouts_the_engine_cannot_lay_out_are_refused():
    with pytest.raises(ConfigError, match=r"parallel\.sp"):
        validate(hf(parallel={"tp": 2, "sp": True}))
    with pytest.raises(ConfigError, match=r"model\.n_kv_heads"):  # 2 kv heads over 4 ranks
        validate(hf(parallel={"tp": 4}))


def test_a_token_file_is_checked_against_the_configurations_vocabulary(tmp_path):
    ids = np.full(2000, 128_255, dtype=np.uint32)  # Llama 3's last id: far beyond the default
    ids.tofile(tmp_path / "ok.bin")
    data = {"kind": "tokens", "path": str(tmp_path / "ok.bin"), "dtype": "uint32"}
    validate(hf("llama-3-8b", data=data))
    ids[1500] = 128_256
    ids.tofile(tmp_path / "bad.bin")
    with pytest.raises(ConfigError, match="token id 128256 at position 1500"):
        validate(hf("llama-3-8b", data={**data, "path": str(tmp_path / "bad.bin")}))


def test_the_shape_formulas_count_the_transformers_module():
    from engine.hf_model import HFRecipe

    cfg = validate(hf())
    module = HFRecipe(cfg.model, seed=0).part(0, 1)
    assert sum(p.numel() for p in module.parameters()) == count_params(cfg.model)["total"]


@pytest.mark.slow
def test_a_broken_factory_is_one_failed_trial_of_a_sweep(tmp_path):
    factory = f"{FACTORIES}:broken_for_seed_1"
    proc = cli(
        "sweep", "model=custom", f"model.factory={factory}", "train.steps=4",
        "train.warmup_steps=1", "sweep.name=factories", "sweep.n_trials=2", "sampler=bruteforce",
        "~space.train", "~space.parallel", "+space.train.seed=[0,1]",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (tmp_path / "reports" / "factories" / "trials.csv").open() as f:
        rows = {r["train.seed"]: r for r in csv.DictReader(f)}
    assert rows["0"]["state"] == "COMPLETE"
    assert (rows["1"]["state"], rows["1"]["fail_reason"]) == ("FAIL", "crash")
    assert f"model.factory={factory} raised ValueError" in rows["1"]["fail_detail"]
    logs = "".join(p.read_text() for p in (tmp_path / "reports").rglob("*.log"))
    assert "with seed 1" in logs and "factories.py" in logs  # the user's traceback
