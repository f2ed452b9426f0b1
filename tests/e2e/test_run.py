"""`python -m tuner run` end to end: the result JSON's interface, and repeated launches."""

from __future__ import annotations

import json

import pytest

from tests.helpers import RESULT_KEYS, cli

pytestmark = pytest.mark.slow


def test_run_writes_the_documented_json_and_merges_repeats(tmp_path):
    out = tmp_path / "run.json"
    proc = cli(
        "run",
        "model=tiny",
        "parallel.dp=2",
        "train.micro_batch=4",
        "train.global_batch=8",
        "train.steps=6",
        "measure.repeats=2",
        f"run.out={out}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "tokens/s" in proc.stdout and "in 2 runs" in proc.stdout
    r = json.loads(out.read_text())
    for key in RESULT_KEYS:
        assert key in r, key
    assert r["repeats"] == 2 and len(r["tokens_per_s_repeats"]) == 2
    low, high = r["tokens_per_s_ci95"]
    assert low <= r["tokens_per_s"] <= high
    # the median over both runs' steps lies between the two runs' own medians
    assert min(r["tokens_per_s_repeats"]) <= r["tokens_per_s"] <= max(r["tokens_per_s_repeats"])
    assert len(r["losses"]) == 6 and r["config"]["parallel"]["dp"] == 2
    runs = list((tmp_path / "reports" / "runs").iterdir())
    assert len(runs) == 1 and {p.name for p in runs[0].iterdir()} >= {"repeat0", "repeat1"}
