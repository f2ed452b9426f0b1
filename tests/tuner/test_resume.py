"""Resuming a sweep: allowed only with the identity it was created with, refused before writing."""

from __future__ import annotations

import optuna
import pytest

from engine.config import ConfigError
from tests.helpers import cli
from tuner.config import load
from tuner.resume import SweepIdentity, check_resumable
from tuner.space import build
from tuner.study import fixed_settings, open_study, study_exists


def _open(tmp_path, *overrides):
    cfg = load([f"sweep.out_dir={tmp_path}", "sweep.name=r", *overrides])
    return open_study(cfg, build(cfg.space, cfg.run).distributions)[0]


def test_new_study_records_its_identity_and_metric_names(tmp_path):
    study = _open(tmp_path, "sweep.objectives=[tokens_per_s,peak_mem_bytes]")
    assert study.metric_names == ["tokens_per_s", "peak_mem_bytes"]
    attrs = study.user_attrs
    assert attrs["sampler"]["_target_"] == "optuna.samplers.TPESampler"
    assert set(attrs["distributions"]) == {"parallel.dp", "train.micro_batch", "train.precision"}
    again = _open(tmp_path, "sweep.objectives=[tokens_per_s,peak_mem_bytes]")  # same: resumes
    assert again.user_attrs == attrs


@pytest.mark.parametrize(
    ("change", "words"),
    [
        # same keys, other choices: Optuna would fail mid-trial on these
        (["space.train.micro_batch=[1,2]"], ["space.train.micro_batch=[1,2,4], now [1,2]"]),
        (["space.train.micro_batch=[4,2,1]"], ["space.train.micro_batch"]),
        (["~space.train.precision"], ["space.train.precision=", "(not searched)"]),
        (["sweep.objectives=[mfu]"], ["sweep.objectives=['tokens_per_s'], now ['mfu']"]),
        (["sampler=random"], ["sampler _target_", "RandomSampler"]),
        (["sweep.seed=3"], ["sampler seed: 0 -> 3"]),
        (["train.global_batch=16"], ["fixed settings train.global_batch: 8 -> 16"]),
    ],
)
def test_changed_identity_is_refused_before_anything_is_written(tmp_path, change, words):
    study = _open(tmp_path)
    before = dict(study.user_attrs)
    with pytest.raises(ConfigError) as err:
        _open(tmp_path, *change)
    message = str(err.value)
    assert "sweep.name=r exists" in message and "\n" not in message
    for word in words:
        assert word in message, message
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path}/r/study.db")
    assert study.user_attrs == before and not study.trials


def test_a_study_from_before_distributions_were_stored_is_checked_on_its_keys(tmp_path):
    study = _open(tmp_path)
    cfg = load([f"sweep.out_dir={tmp_path}", "sweep.name=r", "~space.parallel"])
    dists = build(cfg.space, cfg.run).distributions
    identity = SweepIdentity(["tokens_per_s"], dists, cfg.sampler, fixed_settings(cfg, list(dists)))
    # the attributes an older study holds: the same, without "distributions"
    attrs = {k: v for k, v in study.user_attrs.items() if k != "distributions"}
    legacy = optuna.create_study(study_name="legacy", storage=f"sqlite:///{tmp_path}/r/study.db")
    for key, value in attrs.items():
        legacy.set_user_attr(key, value)
    with pytest.raises(ConfigError, match="searched keys"):
        check_resumable("legacy", legacy, identity)


def test_report_of_a_missing_sweep_creates_nothing(tmp_path):
    proc = cli("report", "sweep.name=missing", cwd=tmp_path)
    assert proc.returncode == 2 and "no sweep named sweep.name=missing" in proc.stderr
    assert "Traceback" not in proc.stderr
    journal = cli("report", "sweep.name=missing", "sweep.storage=journal:j/log", cwd=tmp_path)
    assert journal.returncode == 2 and "no sweep named" in journal.stderr
    assert list(tmp_path.iterdir()) == []


def test_study_exists_does_not_create_storage(tmp_path):
    cfg = load([f"sweep.out_dir={tmp_path}", "sweep.name=x"])
    assert not study_exists(cfg) and not (tmp_path / "x").exists()
    _open(tmp_path)  # creates sweep "r" in tmp_path/r/study.db
    url = f"sqlite:///{tmp_path}/r/study.db"
    assert study_exists(load([f"sweep.out_dir={tmp_path}", "sweep.name=r"]))
    assert study_exists(load([f"sweep.storage={url}", "sweep.name=r"]))
    assert not study_exists(load([f"sweep.storage={url}", "sweep.name=other"]))
    nowhere = load([f"sweep.storage=sqlite:///{tmp_path}/none.db", "sweep.name=r"])
    assert not study_exists(nowhere) and not (tmp_path / "none.db").exists()
