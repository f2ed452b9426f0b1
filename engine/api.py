"""Library use: train your own ``nn.Module`` (or the built-in GPT) with any layout the runner
has, through the runner's own step, and get the runner's figures for it.

    config = EngineConfig(
        parallel=ParallelConfig(dp=2, zero=3),
        train=TrainConfig(global_batch=16, micro_batch=4, lr=1e-3),
    )
    engine = Engine(model, config)
    for inputs, targets in my_batches:          # this data-parallel rank's rows
        loss = engine.train_batch((inputs, targets))
    result = engine.result()                    # rank 0: the run's result, as the runner's

Run it under torchrun (or any launcher that sets RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT), with
dp * tp * pp processes; a process group initialised beforehand is joined as it is. Tensor
parallelism needs a plan for the model's layers (``tp_plan``), pipeline parallelism a split
(``pp_split(model, stage, n_stages)``); see ``engine.recipe.ModuleRecipe``. Pass a
``ModelConfig`` instead of a module to train the built-in GPT.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from engine import runner, runtime
from engine.config import (
    ConfigError,
    MeasureConfig,
    ModelConfig,
    ParallelConfig,
    RunConfig,
    TrainConfig,
)
from engine.hooks import Measurement, timed_step
from engine.mesh import Mesh
from engine.recipe import GPTRecipe, LossFn, ModuleRecipe, PpSplit, Recipe, TpPlan
from engine.recipe import token_cross_entropy as token_cross_entropy  # the default loss
from engine.record import RankRecord
from engine.state import gather_full_state
from engine.step import Diverged, TrainStep
from engine.validate import validate


@dataclass
class EngineConfig:
    """The runner's config sections that apply to a library run. ``train.global_batch`` rows
    make one step over all data-parallel ranks (each passes global_batch / dp of them);
    ``train.steps`` steps (``warmup_steps`` of them unmeasured) make the measured run that
    ``Engine.result`` reports; training may go on beyond them."""

    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    device: str = "auto"  # auto: cuda when available, else cpu

    def run_config(self, model: ModelConfig) -> RunConfig:
        return RunConfig(
            model=model,
            parallel=self.parallel,
            train=self.train,
            measure=self.measure,
            device=self.device,
        )


def _recipe(model: nn.Module | ModelConfig | Recipe, config: EngineConfig, **user) -> Recipe:
    if isinstance(model, nn.Module):
        return ModuleRecipe(model, **user)
    given = [k for k, v in user.items() if v not in (None, token_cross_entropy)]
    if given:  # a recipe, or the built-in GPT, answers these itself
        raise ConfigError(
            f"{given} describe a user's nn.Module, but `model` is a {type(model).__name__}; "
            "pass them to ModuleRecipe, or pass the module itself."
        )
    if isinstance(model, ModelConfig):
        return GPTRecipe(model, seed=config.train.seed)
    if isinstance(model, Recipe):
        return model
    raise ConfigError(
        f"`model` must be an nn.Module, a ModelConfig or a Recipe, but got {type(model)}."
    )


class Engine:
    """A model laid out for ``config.parallel``, trained one global batch at a time."""

    def __init__(
        self,
        model: nn.Module | ModelConfig | Recipe,
        config: EngineConfig | None = None,
        *,
        loss_fn: LossFn = token_cross_entropy,
        tp_plan: TpPlan | None = None,
        pp_split: PpSplit | None = None,
        shard_units: list[nn.Module] | None = None,
    ) -> None:
        config = config or EngineConfig()
        self.recipe = _recipe(
            model, config, loss_fn=loss_fn, tp_plan=tp_plan, pp_split=pp_split, units=shard_units
        )
        user = self.recipe.model_config is None
        # a user's module: the model section only names it (no GPT shape to check or count)
        name = getattr(self.recipe, "name", type(self.recipe).__name__)
        shape = ModelConfig(name=f"user:{name}") if user else self.recipe.model_config
        counted = user and isinstance(model, nn.Module)  # before parallelism replaces anything
        self.n_params = sum(p.numel() for p in model.parameters()) if counted else None
        self.cfg = validate(config.run_config(shape), model_shape=not user)
        self.ctx = runtime.init(self.cfg)
        self.trainer = TrainStep.build(self.cfg, self.ctx, self.recipe)
        self.record = RankRecord(rank=self.ctx.rank, has_loss=self.trainer.stepper.has_loss)
        self.measure = Measurement(self.cfg, self.ctx, self.trainer, self.record)
        self.peak = runner.resolve_peak(self.cfg, self.ctx.device) if self.ctx.is_main else None
        self.steps = 0
        self.tokens_per_row = self.cfg.model.seq_len

    @property
    def mesh(self) -> Mesh:
        return self.trainer.mesh

    @property
    def dp_rank(self) -> int:
        return self.mesh.dp_rank

    @property
    def modules(self) -> list[nn.Module]:
        """This rank's model parts (one; several with interleaved pipeline schedules)."""
        return self.trainer.modules

    def train_batch(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        """One optimizer step on this data-parallel rank's (inputs, targets) rows; returns the
        mean loss over all data-parallel ranks. Under pipeline parallelism every stage passes
        the batch; the first stage uses the inputs, the last the targets. Raises ``Diverged``
        when the loss or gradients became NaN/inf for good."""
        inputs, targets = batch
        rows = self.cfg.train.global_batch // self.mesh.dp
        if inputs.shape[0] != rows or targets.shape[0] != rows:
            raise ConfigError(
                f"`train_batch` takes this rank's train.global_batch / parallel.dp = {rows} rows, "
                f"but got inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)}."
            )
        if self.recipe.model_config is None:  # throughput counts positions of token inputs
            token_ids = inputs.ndim >= 2 and not inputs.is_floating_point()
            self.tokens_per_row = inputs.shape[1] if token_ids else 1
        step, device, size = self.steps, self.ctx.device, self.cfg.train.micro_batch

        def load() -> list[tuple[torch.Tensor, torch.Tensor]]:
            pairs = zip(inputs.split(size), targets.split(size), strict=True)
            return [(x.to(device), y.to(device)) for x, y in pairs]

        loss, update = timed_step(self.measure, self.trainer, step, load)
        diverged = self.measure.note(step, loss, update)
        with self.measure.outside():  # the report is no part of the measured step
            mean = self._global_mean(loss)
        self.measure.after(step)
        self.steps += 1
        if diverged:
            raise Diverged(f"loss diverged (NaN/inf) at step {step}")
        return mean

    def _global_mean(self, loss: torch.Tensor | None) -> float:
        total = torch.zeros((), device=self.ctx.device) if loss is None else loss.float().clone()
        if self.mesh.pp > 1:  # the last stage holds the loss; send it back along the pipeline
            dist.broadcast(total, group=self.mesh.group("pp"), group_src=self.mesh.pp - 1)
        if self.mesh.dp > 1:
            dist.all_reduce(total, group=self.mesh.group("dp"))
            total /= self.mesh.dp
        return total.item()

    def result(self) -> dict | None:
        """The runner's result for the first ``train.steps`` steps: every rank calls it, rank
        0 gets the result, the others None."""
        if self.steps < self.cfg.train.steps:
            raise ConfigError(
                f"the result covers train.steps={self.cfg.train.steps} steps, but "
                f"{self.steps} ran; call train_batch until then, or lower train.steps."
            )
        self.measure.finish()
        model = dataclasses.replace(self.cfg.model, seq_len=self.tokens_per_row)
        cfg = dataclasses.replace(self.cfg, model=model)
        result = runner.collect(cfg, self.record, self.ctx, peak=self.peak)
        if result is not None and self.recipe.model_config is None:
            runner.user_module_figures(result, n_params=self.n_params)
        return result

    def full_state(self) -> dict[str, torch.Tensor]:
        """Every parameter, unsharded, on every rank (every rank calls it)."""
        return gather_full_state(self.modules, initialized=self.ctx.initialized)

    def close(self) -> None:
        runtime.close(self.ctx)
