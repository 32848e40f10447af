"""The service's own write, each job's metrics.jsonl, never stops it: a full disk (a real
ENOSPC, from /dev/full) is logged and skipped, and a job's file stops taking progress lines
past its bound while its terminal event still goes in."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from model_trainer.book.effects import Publish
from model_trainer.book.records import TP
from model_trainer.core.layout import METRICS
from model_trainer.settings import Settings
from model_trainer.shell import journal as journal_module
from model_trainer.shell.journal import journal
from model_trainer_contracts import EventBase
from structlog.testing import capture_logs

from tests.runtime.book_helpers import completed, progress


def _publish(*events: EventBase) -> Publish:
    return Publish(TP("jobs", 0), events, {})


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full for ENOSPC")
async def test_a_full_disk_is_logged_not_fatal(tmp_path: Path) -> None:
    settings = Settings(artifacts_root=tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / METRICS).symlink_to("/dev/full")  # every write: ENOSPC
    committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with capture_logs() as logs:
        journal(_publish(progress("a", 1), progress("a", 2)), settings, committed)
    warnings = [entry for entry in logs if entry["event"] == "metrics.jsonl not written"]
    assert [w["job_id"] for w in warnings] == ["a", "a"]
    assert "No space left on device" in str(warnings[0]["error"])


async def test_progress_lines_stop_at_the_bound_but_the_end_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "METRICS_MAX_BYTES", 1000)
    settings = Settings(artifacts_root=tmp_path)
    committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    journal(_publish(*(progress("a", step) for step in range(1, 30))), settings, committed)
    journal(_publish(completed("a")), settings, committed)
    lines = (tmp_path / "a" / METRICS).read_text().splitlines()
    assert 1 < len(lines) < 30
    assert "manifest_digest" in lines[-1]  # the completed event
    assert (tmp_path / "a" / METRICS).stat().st_size < 1000 + 2 * len(lines[0]) + len(lines[-1])
