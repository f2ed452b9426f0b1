from __future__ import annotations

import os
import uuid

import pytest

from tests.helpers import SESSION_MARKER, engine_pids, wait_until


@pytest.fixture(scope="session", autouse=True)
def _mark_session():
    """Tag every process this test session starts (see helpers.engine_pids)."""
    os.environ[SESSION_MARKER] = uuid.uuid4().hex
    yield


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """Every test must end the engine processes it started."""
    before = engine_pids()
    yield
    wait_until(lambda: not (engine_pids() - before), timeout_s=10)
    left = engine_pids() - before
    assert not left, f"engine processes left running: {sorted(left)}"
