"""User errors on the command line: one clear line, exit status 2, nothing launched."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, cli


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
        (["report", "sweep.storage=foo://bar"], ["sweep.storage", "foo"]),
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


def test_help_config_errors_and_report_do_not_import_torch(tmp_path):
    # torch takes seconds to import; only the subcommands that launch (or export) need it
    code = (
        "import sys\n"
        "from tuner.cli import main\n"
        "codes = [main(['--help']), main(['run', '--cfg', 'job']), main(['run', 'train.lr=nan']),"
        " main(['sweep', 'sampler.seed=-1']), main(['report', 'sweep.name=never_ran'])]\n"
        "print(codes, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[0, 0, 2, 2, 2] False", proc.stdout + proc.stderr
