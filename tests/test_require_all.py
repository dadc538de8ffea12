"""CI's promise: with POPSHIFT_REQUIRE_ALL=1 a skipped test fails, so green means every test ran."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SKIPPING = """
import pytest

def test_skips_inside():
    pytest.skip("no such backend")

@pytest.mark.skipif(True, reason="not root")
def test_skipped_by_mark():
    pass

def test_runs():
    assert True
"""


def _run(tmp_path: Path, require_all: str) -> subprocess.CompletedProcess[str]:
    test_file = tmp_path / "test_skipping.py"
    test_file.write_text(SKIPPING)
    env = {**os.environ, "POPSHIFT_REQUIRE_ALL": require_all}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(test_file),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_skips_fail_when_every_test_must_run(tmp_path: Path) -> None:
    result = _run(tmp_path, "1")
    assert result.returncode != 0, result.stdout
    assert "POPSHIFT_REQUIRE_ALL=1 forbids skips" in result.stdout
    assert "1 passed" in result.stdout
    assert "skipped" not in result.stdout.splitlines()[-1]


def test_skips_stay_skips_otherwise(tmp_path: Path) -> None:
    result = _run(tmp_path, "0")
    assert result.returncode == 0, result.stdout
    assert "1 passed, 2 skipped" in result.stdout
