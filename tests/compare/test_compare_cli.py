"""`python -m tuner compare` as a user runs it: refusals before anything is written, and the
page over two real sweeps of different precisions."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tests.compare.real_sweeps import NAMES, TIMEOUT_S
from tests.compare.studies import sweep_study
from tests.helpers import cli
from tuner.compare import data
from tuner.compare.sweeps import conditions, from_study, layout_of

MEASURED = {(1, 2): 1000.0, (2, 2): 1500.0}


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _stored(tmp_path: Path, name: str, **fixed) -> None:
    folder = tmp_path / "reports" / name
    folder.mkdir(parents=True)
    sweep_study(name, MEASURED, fixed=fixed, storage=f"sqlite:///{folder / 'study.db'}")


def test_one_name_is_refused(tmp_path):
    proc = cli("compare", "a", cwd=tmp_path)
    assert proc.returncode == 2
    assert "at least two sweep names" in proc.stderr and proc.stderr.count("\n") == 1


def test_a_missing_sweep_is_refused_and_nothing_is_created(tmp_path):
    _stored(tmp_path, "a")
    before = _files(tmp_path)
    proc = cli("compare", "a", "nosuch", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no sweep named nosuch" in proc.stderr and proc.stderr.count("\n") == 1
    assert _files(tmp_path) == before


def test_different_models_are_refused_unless_forced(tmp_path):
    _stored(tmp_path, "a")
    _stored(tmp_path, "b", **{"model.n_layers": 2})
    before = _files(tmp_path)
    proc = cli("compare", "a", "b", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "model.n_layers 4 vs 2" in proc.stderr and "compare.force=true" in proc.stderr
    assert _files(tmp_path) == before
    forced = cli("compare", "a", "b", "compare.force=true", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    page = tmp_path / "reports" / "compare" / "a-vs-b.html"
    assert "measured different models" in page.read_text()


@pytest.mark.slow
@pytest.mark.long
@pytest.mark.timeout(TIMEOUT_S)
def test_two_real_sweeps_of_different_precisions(sweeps_dir):
    out = sweeps_dir / "reports" / "compare" / "fp32-vs-bf16.html"
    proc = cli("compare", *NAMES, cwd=sweeps_dir)
    assert proc.returncode == 0, proc.stderr
    assert str(out.resolve()) in proc.stdout
    sweeps = [
        from_study(
            optuna.load_study(
                study_name=n, storage=f"sqlite:///{sweeps_dir / 'reports' / n / 'study.db'}"
            )
        )
        for n in NAMES
    ]
    assert conditions(sweeps) == ["train.precision"]
    side = data.side_by_side(sweeps)
    # both sweeps measured every layout of the same space: each is side by side
    layouts = [{layout_of(m, ["train.precision"]) for m in s.measured} for s in sweeps]
    assert side["layout"].nunique() == len(layouts[0] & layouts[1]) > 0
    html = out.read_text()
    assert all(label in html for label in side["layout"])
