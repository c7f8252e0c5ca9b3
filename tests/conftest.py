"""Shared fixtures. Real parts only: the real rdiff, a real PostgreSQL server, a real S3 server."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def require_tool(name: str) -> str:
    """The path of a program the tests need. Missing is a failure, never a skip: .ci/run installs it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run .ci/run (or apt-get install it) before the tests")
    return path


@pytest.fixture(scope="session")
def rdiff_bin() -> str:
    return require_tool("rdiff")


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o755)
    return tmp_path
