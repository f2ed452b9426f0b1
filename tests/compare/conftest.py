from __future__ import annotations

from pathlib import Path

import pytest

from tests.compare.real_sweeps import two_sweeps


@pytest.fixture(scope="session")
def sweeps_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """reports/fp32 and reports/bf16: real sweeps, measured once per session."""
    return two_sweeps(tmp_path_factory.getbasetemp() / "two-sweeps")
