"""The result schema end to end, on results of real engine runs: the study stores a result in
one write and gives it back whole, trials.csv and the report's table carry every figure the
schema marks as a column, and a figure the run did not measure is null everywhere."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.storages import InMemoryStorage

from engine import result_schema
from tests.helpers import run_engine, tiny_config
from tuner.report import trials_frame, write_report
from tuner.report.best import SHOWN
from tuner.study import record_result, stored_result

pytestmark = pytest.mark.slow
DIST = {"parallel.dp": CategoricalDistribution([2])}
LAYOUT = {"parallel": {"dp": 2}}
BATCH = {"micro_batch": 4, "global_batch": 8}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    """Two real runs: one with profiled steps, one without (its communication figures, the
    breakdown and the CPU tensor peak are not measured)."""
    measured = tiny_config(**LAYOUT, train={**BATCH, "steps": 6})
    unmeasured = tiny_config(**LAYOUT, train={**BATCH, "steps": 4}, measure={"profile_steps": 0})
    return {
        "measured": run_engine(measured, tmp_path_factory.mktemp("measured")),
        "unmeasured": run_engine(unmeasured, tmp_path_factory.mktemp("unmeasured")),
    }


class CountingStorage(InMemoryStorage):
    """An in-memory storage that counts the trial attribute writes it receives."""

    writes = 0

    def set_trial_user_attr(self, trial_id, key, value):
        self.writes += 1
        super().set_trial_user_attr(trial_id, key, value)

    def set_trial_system_attr(self, trial_id, key, value):
        self.writes += 1
        super().set_trial_system_attr(trial_id, key, value)


def _study_with(result: dict, storage) -> optuna.Study:
    study = optuna.create_study(study_name="schema", storage=storage, direction="maximize")
    trial = study.ask(DIST)
    record_result(trial, result)
    study.tell(trial, result["tokens_per_s"])
    return study


def test_results_carry_exactly_the_declared_figures(results):
    for result in results.values():
        assert list(result) == list(result_schema.names("ok"))
    # the measured run has a value for every column; the other one has nulls to show
    assert all(v is not None for v in result_schema.column_values(results["measured"]).values())
    assert None in result_schema.column_values(results["unmeasured"]).values()


def test_a_result_is_one_storage_write_and_reads_back_whole(results, tmp_path):
    storage = CountingStorage()
    _study_with(results["measured"], storage)
    assert storage.writes == 1
    url = f"sqlite:///{tmp_path}/study.db"
    _study_with(results["unmeasured"], url)
    (trial,) = optuna.load_study(study_name="schema", storage=url).trials
    assert stored_result(trial) == results["unmeasured"]


@pytest.mark.parametrize("which", ["measured", "unmeasured"])
def test_csv_and_report_carry_every_column_and_blank_what_was_not_measured(
    results, tmp_path, which
):
    result = results[which]
    url = f"sqlite:///{tmp_path}/study.db"
    write_report(_study_with(result, url), tmp_path)
    study = optuna.load_study(study_name="schema", storage=url)
    stored = stored_result(study.trials[0])
    with open(tmp_path / "trials.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    (frame,) = trials_frame(study).to_dict("records")
    page = (tmp_path / "report.html").read_text()
    why = result["not_measured"]
    for column in result_schema.columns():
        value = column.read(result)
        assert column.read(stored) == value, column.name  # the study gives the same figure
        assert f"<th>{column.name}</th>" in page, column.name  # the page's table of trials
        if value is None:  # null in the JSON, the study, the CSV and the table; with a reason
            assert result[column.field] is None and row[column.name] == "", column.name
            assert pd.isna(frame[column.name]), column.name
            assert column.field in why, f"{column.name} is null without a reason"
        elif column.role == "metric":
            assert float(row[column.name]) == pytest.approx(value, rel=1e-12), column.name
            assert float(frame[column.name]) == pytest.approx(value, rel=1e-12), column.name
    assert row["timing_includes_profiler"] == str(result["timing_includes_profiler"])
    assert row["mem_prediction_compared_to"] == result["mem_prediction_compared_to"]
    for figure, reason in why.items():  # the CSV's note names every reason and figure
        assert reason in row["not_measured"] and figure in row["not_measured"]
    # the best trial's section says "not measured" with the reason where it shows a figure
    for key, label, _ in SHOWN:
        if result[key] is None:
            assert f"<th>{label}" in page and f"not measured: {why[key]}" in page, key
    if which == "unmeasured":
        assert "comm_bytes" in why and "not measured: no profiled step" in page


def test_a_study_stored_one_attribute_per_figure_reads_the_same(results):
    """Studies written before results were stored whole: one user attribute per column, plus
    the per-kind communication and the reasons. The table is the same."""
    whole = optuna.create_study(storage=None)
    legacy = optuna.create_study(storage=None)
    for result in results.values():
        whole.add_trial(_frozen({"result": result}))
        flat = result_schema.column_values(result)
        flat |= {k: result[k] for k in ("comm", "comm_notes", "losses", "not_measured")}
        legacy.add_trial(_frozen(flat))
        assert stored_result(legacy.trials[-1])["comm"] == result["comm"]
    columns = [c.name for c in result_schema.columns()]
    old, new = trials_frame(legacy)[columns], trials_frame(whole)[columns]
    assert old.equals(new)


def _frozen(user_attrs: dict) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        value=1.0, params={"parallel.dp": 2}, distributions=DIST, user_attrs=user_attrs
    )


def test_the_schema_imports_without_torch():
    code = "import sys, engine.result_schema; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
