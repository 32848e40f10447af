"""Fixtures for the storage tests: the engine's (tiny corpora, tiny jobs) on a real S3."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.engine_helpers import Env


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)
