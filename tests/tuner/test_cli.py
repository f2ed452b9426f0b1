"""User errors on the command line: one clear line, exit status 2, nothing launched."""

from __future__ import annotations

import pytest

from tests.helpers import cli


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "train.steps=abc"], ["train.steps", "abc"]),
        (["run", "train.bogus=1"], ["train.bogus"]),
        (["run", "parallel.dp=3"], ["parallel.dp=3", "train.global_batch"]),
        (
            ["run", "parallel.dp=16", "train.global_batch=64", "train.micro_batch=1"],
            ["16", "launcher.max_ranks"],
        ),
        (["sweep", "sweep.n_trials=0"], ["sweep.n_trials"]),
        (["sweep", "space.parallel.dp=[1,-1]"], ["space.parallel.dp", "-1"]),
        (["report", "sweep.name=never_ran"], ["never_ran"]),
        # an objective the profiler measures, in a sweep whose trials may not profile
        (
            ["sweep", "measure.profile_steps=0", "sweep.objectives=[comm_bytes]"],
            ["comm_bytes", "measure.profile_steps"],
        ),
        (
            ["sweep", "+space.measure.profile_steps=[0,2]", "sweep.objectives=[comm_time_s]"],
            ["comm_time_s", "measure.profile_steps"],
        ),
        (["launch"], ["launch", "sweep, run, report"]),
    ],
)
def test_bad_input_stops_before_anything_runs(tmp_path, args, words):
    proc = cli(*args, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error:"), proc.stderr
    for word in words:
        assert word in proc.stderr
    made = (
        [p for p in (tmp_path / "reports").rglob("*") if p.is_file()] if args[0] != "report" else []
    )
    assert made == [], f"files written before the error: {made}"


def test_cfg_job_prints_the_composed_config(tmp_path):
    proc = cli("run", "parallel.dp=2", "--cfg", "job", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "dp: 2" in proc.stdout and "micro_batch:" in proc.stdout


def test_help_lists_commands_and_groups(tmp_path):
    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "sweep" in proc.stdout and "model: " in proc.stdout and "gpt2-small" in proc.stdout
