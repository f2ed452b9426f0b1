"""ruff (configured in pyproject.toml) is part of the test suite, so CI enforces it."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.helpers import REPO


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff_is_clean(args):
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    proc = subprocess.run([ruff, *args, "."], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
