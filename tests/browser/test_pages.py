"""Every kind of page the tuner writes, opened from disk in a real Chromium with no network:
no console error, every figure drew marks, nothing fetched, the page within its size."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from tests.browser import pages
from tests.compare.real_sweeps import TIMEOUT_S
from tuner.report.html import figure_html, page

pytestmark = [pytest.mark.browser, pytest.mark.long]


def _check(opened, kind: str) -> None:
    assert opened.console_errors == []
    assert opened.marks, "the page has no figure"
    empty = [fig for fig, marks in opened.marks.items() if marks == 0]
    assert not empty, f"figures without a drawn mark: {empty} of {opened.marks}"
    assert all(url.startswith(("file:", "data:")) for url in opened.fetched), opened.fetched
    assert opened.size_bytes < pages.MAX_BYTES[kind]


def test_the_checks_catch_a_broken_page(browser, tmp_path):
    broken = tmp_path / "broken.html"
    body = [
        figure_html(go.Figure(layout={"height": 300})),  # axes, no data
        '<img src="http://127.0.0.1:9/missing.png">',
        "<script>console.error('drawn wrong')</script>",
    ]
    broken.write_text(page("broken", body))
    opened = browser.open(broken)
    assert any("drawn wrong" in e for e in opened.console_errors)
    assert list(opened.marks.values()) == [0]
    assert any(url.startswith("http:") for url in opened.fetched)


def test_plan_page(browser, tmp_path):
    _check(browser.open(pages.plan_page(tmp_path)), "plan")


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S)
def test_sweep_report(browser, sweeps_dir):
    _check(browser.open(pages.sweep_report(sweeps_dir)), "sweep")


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S)
def test_compare_page(browser, sweeps_dir):
    opened = browser.open(pages.compare_page(sweeps_dir))
    _check(opened, "compare")
    assert len(opened.marks) == 3  # throughput, ratios, knob effects


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S)
def test_screenshots_are_taken(browser, sweeps_dir, tmp_path):
    for kind, make in pages.KINDS.items():
        browser.open(make(sweeps_dir if kind != "plan" else tmp_path))
        shot = browser.screenshot(tmp_path / f"{kind}.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert 10_000 < shot.stat().st_size < pages.MAX_SCREENSHOT_BYTES
