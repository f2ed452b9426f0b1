"""The confirmation's verdict where a reader looks: a section under the leaderboard and a line
of the sweep's last words, naming layouts, not trial numbers."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import optuna

from tuner.confirm import Contender, judge
from tuner.progress import final_lines
from tuner.report import trials_frame
from tuner.report.html import render_report
from tuner.study import CONFIRM_ATTR


def _record(study: optuna.Study, contenders: list[Contender]) -> None:
    verdict = judge(contenders)
    study.set_user_attr(
        CONFIRM_ATTR,
        {
            "after_trials": len(study.trials),
            "winner": verdict.winner,
            "text": verdict.text,
            "contenders": [asdict(c) for c in verdict.contenders],
        },
    )


def test_a_confirmed_winner_is_named_with_its_range(study: optuna.Study, tmp_path: Path) -> None:
    _record(study, [Contender(2, [2400.0, 2450.0, 2500.0]), Contender(7, [2200.0, 2300.0])])
    layout = trials_frame(study).set_index("number").loc[2, "layout"]
    page = render_report(study)
    assert "<h2>Confirmation</h2>" in page and "Confirmed:" in page
    assert page.index("<h2>Leaderboard</h2>") < page.index("<h2>Confirmation</h2>")
    assert "2,400–2,500" in page
    line = next(x for x in final_lines(study, tmp_path) if x.startswith("confirmed"))
    assert layout in line and "2,450 tokens/s (2,400-2,500 over 3 launches" in line


def test_overlapping_ranges_are_said_plainly(study: optuna.Study, tmp_path: Path) -> None:
    _record(study, [Contender(2, [2400.0, 2500.0]), Contender(7, [2450.0, 2380.0])])
    page = render_report(study)
    assert "Not confirmed:" in page and "cannot be told apart" in page
    assert any(x.startswith("not confirmed: the top 2") for x in final_lines(study, tmp_path))


def test_no_confirmation_no_section(study: optuna.Study, tmp_path: Path) -> None:
    assert "<h2>Confirmation</h2>" not in render_report(study)
    assert not any("confirmed" in x for x in final_lines(study, tmp_path))
