"""A real Chromium, headless, driven by its own driver (Debian's chromium and
chromium-driver, through selenium): pages are opened from disk, offline, and asked what
they drew, what they logged and what they loaded."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selenium.webdriver import Chrome

WIDTH = 1280
# Marks a figure draws: bars, points, lines, error bars — the paths inside plotly's data layer
# (axes, grid and shapes such as a reference line live in other layers and do not count).
_MARKS_JS = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).map(div => {
  let marks = 0;
  for (const p of div.querySelectorAll('.cartesianlayer .trace path')) {
    const box = p.getBBox();
    if (p.getAttribute('d') && box.width + box.height > 0) marks++;
  }
  return [div.id, marks];
});
"""
_READY_JS = """
return document.readyState === 'complete' &&
  Array.from(document.querySelectorAll('.js-plotly-plot')).every(d => d._fullLayout);
"""


def executables() -> tuple[str, str] | None:
    """(chromium, chromedriver) on PATH, or None when either is missing."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    return found if all(found) else None


@dataclass(frozen=True)
class Opened:
    """What a page did once loaded."""

    console_errors: list[str]
    marks: dict[str, int]  # figure div id -> drawn marks
    fetched: list[str]  # every resource the page loaded, by URL
    size_bytes: int


class Browser:
    """One headless Chromium for several pages (``with Browser() as b: b.open(path)``)."""

    def __init__(self) -> None:
        found = executables()
        if found is None:
            raise RuntimeError("chromium and chromedriver are not installed")
        self.chromium, self.chromedriver = found
        self.driver: Chrome | None = None

    def __enter__(self) -> Browser:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = self.chromium  # never a downloaded browser
        for arg in (
            "--headless=new",
            "--no-sandbox",  # root in CI: Chromium's sandbox refuses to start as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            f"--window-size={WIDTH},1000",
            "--force-device-scale-factor=1",
        ):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # a driver path given: selenium does not look for (or download) one itself
        self.driver = webdriver.Chrome(options=options, service=Service(self.chromedriver))
        # offline: any request beyond the file itself fails, and shows as a console error
        self.driver.set_network_conditions(
            offline=True, latency=0, download_throughput=0, upload_throughput=0
        )
        self.driver.set_page_load_timeout(120)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.driver is not None:
            self.driver.quit()

    def open(self, path: Path) -> Opened:
        from selenium.webdriver.support.ui import WebDriverWait

        d = self.driver
        d.get(path.resolve().as_uri())
        WebDriverWait(d, 120).until(lambda drv: drv.execute_script(_READY_JS))
        errors = [e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]
        fetched = d.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name);"
        )
        return Opened(
            console_errors=errors,
            marks=dict(d.execute_script(_MARKS_JS)),
            fetched=list(fetched),
            size_bytes=path.stat().st_size,
        )

    def screenshot(self, path: Path, *, height: int = 1500) -> Path:
        """The top ``height`` pixels of the page open now, as a PNG."""
        d = self.driver
        d.set_window_size(WIDTH, height)
        d.execute_script("window.scrollTo(0, 0);")
        path.parent.mkdir(parents=True, exist_ok=True)
        d.save_screenshot(str(path))
        return path
