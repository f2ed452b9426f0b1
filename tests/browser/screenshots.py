"""Regenerate the screenshots the README shows (docs/screenshots/<kind>.png): the real
commands write each kind of page, and a headless Chromium photographs its top.

    python -m tests.browser.screenshots [OUT_DIR [SWEEPS_DIR]]

It measures two tiny sweeps first (a few minutes on 2 cores) in a temporary folder, or in
SWEEPS_DIR, where sweeps measured before are used again."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from tests.browser import pages
from tests.browser.driver import Browser
from tests.compare.real_sweeps import two_sweeps

DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DOCS
    with tempfile.TemporaryDirectory() as tmp, Browser() as browser:
        root = two_sweeps(Path(argv[1]) if len(argv) > 1 else Path(tmp) / "two-sweeps")
        for kind, make in pages.KINDS.items():
            browser.open(make(root if kind != "plan" else Path(tmp)))
            print(browser.screenshot(out / f"{kind}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
