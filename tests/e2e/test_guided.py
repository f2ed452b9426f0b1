"""Model-guided sweeps, live: `sampler=model` launches the performance model's pick first and
never the same layout twice; `sweep.seed_from_plan` queues the model's top layouts in another
sampler; a guided sweep that cannot rank by throughput is refused before anything exists."""

from __future__ import annotations

import optuna
import pytest

from tests.helpers import cli
from tuner.config import load
from tuner.guided import ModelSampler
from tuner.guided_sweep import prepare
from tuner.sweep_checks import sweep_space

pytestmark = [pytest.mark.slow, pytest.mark.long]  # real sweeps or timed delays: minutes
FAST = ["model=tiny", "train.steps=4", "train.warmup_steps=1", "train.global_batch=8"]
SPACE = ["space=default", "space.parallel.dp=[1,2]", "space.train.micro_batch=[1,2,4]"]


def _model_ranking() -> list[dict]:
    """The layouts of the sweep's space as the prior model ranks them, best first."""
    cfg = load([*FAST, *SPACE, "sampler=model"])
    study = optuna.create_study(direction="maximize", sampler=ModelSampler())
    prepare(cfg, study, sweep_space(cfg), echo=lambda _: None)
    return [c.params for c, _ in study.sampler.predicted()]


def _trials(tmp_path, name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(
        study_name=name, storage=f"sqlite:///{tmp_path}/reports/{name}/study.db"
    )
    return sorted(study.trials, key=lambda t: t.number)


def test_model_guided_sweep_launches_the_models_pick_first_and_each_layout_once(tmp_path):
    proc = cli(
        "sweep",
        *FAST,
        *SPACE,
        "sampler=model",
        "sampler.min_fit_trials=2",
        "sweep.name=guided",
        "sweep.n_trials=6",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "runnable layouts ranked by the performance model" in proc.stderr
    trials = _trials(tmp_path, "guided")
    assert trials[0].params == _model_ranking()[0]
    keys = [t.user_attrs["layout_key"] for t in trials]
    assert len(keys) == len(set(keys))  # no repeats, no claims: every trial a new layout
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # it ran the whole space, or stopped early and said why
    assert len(trials) == 6 or "no untried layout can beat" in proc.stderr


def test_seed_from_plan_queues_the_models_top_layouts_in_another_sampler(tmp_path):
    proc = cli(
        "sweep",
        *FAST,
        *SPACE,
        "sampler=random",
        "sweep.seed_from_plan=2",
        "sweep.name=seeded",
        "sweep.n_trials=2",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "queued the model's top 2" in proc.stderr
    assert [t.params for t in _trials(tmp_path, "seeded")] == _model_ranking()[:2]


def test_guided_sweep_that_cannot_rank_by_throughput_is_refused_before_anything(tmp_path):
    proc = cli(
        "sweep",
        *FAST,
        "sampler=model",
        "sweep.objectives=[peak_mem_bytes]",
        "sweep.name=refused",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "sampler=model" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "reports").exists()


def test_the_winner_is_measured_again_beside_the_layouts_it_cannot_be_told_from(tmp_path):
    proc = cli(
        "sweep",
        *FAST,
        "space=default",
        "space.train.micro_batch=[1,2]",
        "~space.train.precision",
        "space.parallel.dp=[1]",
        "sampler=bruteforce",
        "sweep.name=confirm",
        "sweep.n_trials=2",
        "sweep.confirm_top=2",
        "sweep.confirm_rounds=2",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(
        study_name="confirm", storage=f"sqlite:///{tmp_path}/reports/confirm/study.db"
    )
    verdict = study.user_attrs.get("confirmation")
    if verdict is None:  # the two intervals did not overlap: nothing to confirm
        assert "confirming" not in proc.stderr
        return
    assert verdict["text"] in proc.stderr
    assert len(verdict["contenders"]) == 2
    assert all(len(c["tokens_per_s"]) == 2 for c in verdict["contenders"])
    assert len(list((tmp_path / "reports/confirm/confirm").iterdir())) == 4
