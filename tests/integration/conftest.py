from __future__ import annotations

from pathlib import Path

import pytest
from local_service import Stack


@pytest.fixture
def stack(kafka_bootstrap: str, tmp_path: Path) -> Stack:
    """Fresh topics, consumer group and folders on the session's broker."""
    return Stack(kafka_bootstrap, tmp_path)
