"""Full and read-only disks, on small filesystems mounted by the tests: checked before the first
trial, and a disk that fills during a sweep ends it cleanly with the study intact.

Mounting needs root and a kernel that lets this process mount (not every container does); the
tests skip, saying why, where it is not permitted. Permission bits would not do: root ignores them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from engine.results import write_json_atomic
from tests.helpers import cli
from tuner.outputs import OutputError
from tuner.report import write_report

pytestmark = pytest.mark.slow
FAST = ["model=tiny", "train.steps=4", "train.warmup_steps=1"]


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {proc.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB filesystem: smaller than one report (plotly.js alone is larger)."""
    where = tmp_path / "fs"
    _mount_tmpfs(where, "2m")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def full_fs(small_fs):
    """The small filesystem, filled to the last byte."""
    fd = os.open(small_fs / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC, err
    finally:
        os.close(fd)
    return small_fs


@pytest.fixture
def read_only_fs(small_fs):
    proc = subprocess.run(
        ["mount", "-o", "remount,ro", str(small_fs)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        pytest.skip(f"remounting read-only is not permitted here: {proc.stderr.strip()}")
    return small_fs


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_a_failed_json_write_leaves_no_temporary_file(full_fs):
    with pytest.raises(OSError) as caught:
        write_json_atomic(full_fs / "result.json", {"losses": list(range(10_000))})
    assert caught.value.errno == errno.ENOSPC
    assert not (full_fs / "result.json").exists()
    assert _temporaries(full_fs) == []


def test_a_report_larger_than_the_free_space_is_one_error_and_no_half_file(small_fs):
    study = optuna.create_study(study_name="s", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={"tokens_per_s": 1.0}))
    with pytest.raises(OutputError) as caught:
        write_report(study, small_fs)
    message = str(caught.value)
    assert "\n" not in message and "report.html" in message and "disk full" in message
    assert not (small_fs / "report.html").exists()
    assert _temporaries(small_fs) == []


@pytest.mark.parametrize("kind", ["full", "read-only"])
def test_an_unwritable_out_dir_stops_before_the_first_trial(tmp_path, request, kind):
    fs = request.getfixturevalue("full_fs" if kind == "full" else "read_only_fs")
    proc = cli("sweep", *FAST, "sweep.name=d", f"sweep.out_dir={fs}", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = _error_line(proc.stderr)
    assert f"sweep.out_dir={fs}" in line
    assert ("No space left" if kind == "full" else "Read-only") in line, line
    assert not (fs / "d" / "trials").exists()


def test_a_read_only_run_out_stops_before_the_run(tmp_path, read_only_fs):
    proc = cli("run", *FAST, f"run.out={read_only_fs}/r.json", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "run.out=" in _error_line(proc.stderr)
    assert not (tmp_path / "reports" / "runs").exists(), "the run was launched"


def test_a_disk_that_fills_during_a_sweep_ends_it_cleanly(tmp_path, small_fs):
    # the trial's checkpoint (several MiB) does not fit: the disk fills while a rank saves it.
    # The study sits elsewhere (a journal file), as a shared study would.
    journal = tmp_path / "study.log"
    proc = cli(
        "sweep",
        *FAST,
        "checkpoint.every=2",
        f"checkpoint.dir={tmp_path / 'unused'}",
        "sweep.name=d",
        "sweep.n_trials=2",
        f"sweep.out_dir={small_fs}",
        f"sweep.storage=journal:{journal}",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    line = _error_line(proc.stderr)
    assert proc.stderr.rstrip().endswith(line)
    assert "disk full" in line and str(small_fs) in line
    assert _temporaries(small_fs) == [], "an interrupted write was left behind"
    assert not (small_fs / "d" / "report.html").exists()  # too large to fit: none, not half

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    study = optuna.load_study(study_name="d", storage=storage)
    trials = study.get_trials()
    failed = trials[0]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"] == "disk_full"
    assert str(small_fs) in failed.user_attrs["fail_detail"]
    # queued again: the layout was not at fault, it is measured on resume
    assert [t.state for t in trials[1:]] == [TrialState.WAITING]
    assert trials[1].system_attrs["fixed_params"] == failed.params
    json.dumps(study.user_attrs)  # the study's own records still read back whole
