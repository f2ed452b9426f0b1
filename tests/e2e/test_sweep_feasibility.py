"""A sweep never launches what cannot run here: layouts predicted not to fit the memory the
launcher gives them are pruned with both figures, and a space where nothing can run stops
before the first launch."""

from __future__ import annotations

import optuna
import pytest

from engine.units import GIB, MIB
from tests.helpers import cli

pytestmark = pytest.mark.slow
FAST = ["model=tiny", "train.steps=4", "train.warmup_steps=1", "train.global_batch=8"]


def test_layouts_predicted_not_to_fit_are_never_launched(tmp_path):
    # 25 MiB for the trial's tensors: one rank fits micro-batches 1, 2 and 4 of the tiny model
    # (16-23 MiB predicted), not 8 (29 MiB); two ranks get 12.5 MiB each and fit nothing
    limit = 25 * MIB / GIB
    proc = cli(
        "sweep",
        *FAST,
        "sweep.name=fits",
        "sweep.n_trials=3",
        "sampler=bruteforce",
        "space=default",
        "space.parallel.dp=[1,2]",
        "space.train.micro_batch=[1,2,4,8]",
        "~space.train.precision",
        f"launcher.mem_limit_gib={limit}",
        "launcher.mem_reserve_gib=0",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(
        study_name="fits", storage=f"sqlite:///{tmp_path}/reports/fits/study.db"
    )
    trials = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    memory = [t for t in trials if t.user_attrs.get("fail_reason") == "memory"]
    launched = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted((t.params["parallel.dp"], t.params["train.micro_batch"]) for t in launched) == [
        (1, 1),
        (1, 2),
        (1, 4),
    ]
    assert {(t.params["parallel.dp"], t.params["train.micro_batch"]) for t in memory} == {
        (1, 8),
        (2, 1),
        (2, 2),
        (2, 4),
    }
    for t in memory:
        assert t.state == optuna.trial.TrialState.PRUNED
        assert (
            "predicted" in t.user_attrs["fail_detail"] and "capacity" in t.user_attrs["fail_detail"]
        )
        assert not (tmp_path / "reports" / "fits" / "trials" / f"{t.number:04d}").exists()


def test_a_space_where_nothing_can_run_stops_before_launching(tmp_path):
    proc = cli("sweep", *FAST, "parallel.tp=3", "sweep.name=none", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    assert "parallel.tp=3" in proc.stderr and "model.n_heads" in proc.stderr
    assert not (tmp_path / "reports" / "none").exists()
