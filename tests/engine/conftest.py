"""Fixtures for the engine tests (CPU only, tiny models, corpora made in tmp_path)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from model_trainer.core.distributed import Rank
from model_trainer.engine.distributed import join, leave

from tests.engine.engine_helpers import Env


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture
def one_rank(tmp_path: Path) -> Iterator[Rank]:
    """This process as the one rank of an FSDP group (a file store in tmp_path), left after."""
    rank = Rank(0, 1, "fsdp", f"file://{tmp_path / 'store'}")
    join(rank)
    try:
        yield rank
    finally:
        leave()
