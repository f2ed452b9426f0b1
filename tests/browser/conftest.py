from __future__ import annotations

import importlib.util
import os

import pytest

from tests.browser.driver import Browser, executables
from tests.compare.conftest import sweeps_dir  # noqa: F401  (the same two sweeps)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session. Without chromium installed the browser tests
    are skipped here, and fail in CI (where .ci/run installs it)."""
    why = None
    if executables() is None:
        why = "chromium or chromedriver is missing (apt-get install chromium chromium-driver)"
    elif importlib.util.find_spec("selenium") is None:
        why = "selenium is missing (pip install -e '.[test]')"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {why}")
        pytest.skip(why)
    with Browser() as b:
        yield b
