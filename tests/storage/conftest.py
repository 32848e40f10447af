"""Fixtures for the storage tests: the engine's (tiny corpora, tiny jobs) on a real S3."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from local_s3 import LocalS3
from model_trainer.core import storage

from tests.engine.engine_helpers import Env


def use_s3(server: LocalS3, monkeypatch: pytest.MonkeyPatch, **override: str) -> None:
    """Point this process's storage layer at ``server`` (``override``: other variables)."""
    for name, value in {**server.client_env(), **override}.items():
        monkeypatch.setenv(name, value)
    storage.forget()


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


@pytest.fixture
def s3(local_s3: LocalS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[storage.ObjectStore]:
    use_s3(local_s3, monkeypatch)
    yield storage.store()
    storage.forget()
