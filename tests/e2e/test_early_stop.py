"""Early stopping end to end: a real sweep whose second layout is clearly slower than its first
is stopped after a few timed steps, recorded PRUNED with its reason and partial figures."""

from __future__ import annotations

import csv

import optuna
import pytest

from engine.results import timed_steps
from tests.helpers import cli, engine_pids
from tuner.config import load

pytestmark = [pytest.mark.slow, pytest.mark.long]  # a real sweep of long trials (minutes)
MIN_STEPS = 3
# steps 1..9 timed, none profiled: a trial stopped after MIN_STEPS of them ran fewer
RUN = [
    "model=tiny",
    "train.global_batch=8",
    "train.steps=10",
    "train.warmup_steps=1",
    "measure.profile_steps=0",
]
SPACE = ["space.parallel.dp=[1]", "space.train.micro_batch=[8,1]"]
SPACE += ["space.train.precision=[fp32,bf16]"]
# in this order: whole batches in fp32 first, then one sequence per micro-batch under bf16
# autocast (emulated on CPU): several times slower per token
FAST = {"parallel.dp": 1, "train.micro_batch": 8, "train.precision": "fp32"}
SLOW = {"parallel.dp": 1, "train.micro_batch": 1, "train.precision": "bf16"}


def _queue(tmp_path, name: str) -> str:
    """The sweep's study, created before the sweep with its two trials queued in order."""
    folder = tmp_path / "reports" / name
    folder.mkdir(parents=True)
    storage = f"sqlite:///{folder / 'study.db'}"
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.enqueue_trial(FAST)
    study.enqueue_trial(SLOW)
    return storage


def test_a_clearly_slower_trial_is_stopped_early_with_its_partial_figures(tmp_path):
    name = "early"
    storage = _queue(tmp_path, name)
    before = engine_pids()
    args = ["sweep", *RUN, *SPACE, f"sweep.name={name}", "sweep.n_trials=2"]
    proc = cli(*args, f"sweep.early_stop_min_steps={MIN_STEPS}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert engine_pids() <= before  # the stopped trial's ranks were ended

    fast, slow = optuna.load_study(study_name=name, storage=storage).trials
    assert fast.state.name == "COMPLETE" and fast.params == FAST
    assert slow.params == SLOW
    assert slow.state.name == "PRUNED", slow.user_attrs.get("fail_detail")
    attrs = slow.user_attrs
    assert attrs["fail_reason"] == "early_stop"
    assert attrs["fail_detail"].startswith("slower than trial 0 (optimistic ")
    configured = len(timed_steps(load(RUN).run)[0])
    assert MIN_STEPS <= attrs["partial_steps"] < configured
    low, high = attrs["partial_tokens_per_s_ci"]
    assert low <= attrs["partial_tokens_per_s"] <= high < fast.values[0]
    assert len(slow.intermediate_values) == attrs["partial_steps"]
    assert "result" not in attrs  # no result: the run did not finish

    assert "stopped early: slower than trial 0" in proc.stderr
    assert "1 trial stopped early" in proc.stderr
    out = tmp_path / "reports" / name
    with (out / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["state"] == "PRUNED" and rows[1]["fail_reason"] == "early_stop"
    assert float(rows[1]["partial_tokens_per_s"]) == pytest.approx(attrs["partial_tokens_per_s"])
    html = (out / "report.html").read_text()
    assert "slower than trial 0" in html and "partial_tokens_per_s" in html
