"""Fixtures for the engine tests (CPU only, tiny models, corpora made in tmp_path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.engine.engine_helpers import Env


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)
