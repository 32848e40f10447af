"""A worker's environment holds none of the service's Kafka secrets: read from the real
worker process's ``/proc/<pid>/environ`` (what it was started with), while the service keeps
its own."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from model_trainer.pool.pool import WorkerPool
from structlog.testing import capture_logs

PASSWORD = "pw-never-in-a-worker"


@pytest.mark.slow  # a real worker process (it imports torch)
async def test_workers_start_without_the_kafka_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_TRAINER_KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("MODEL_TRAINER_KAFKA_SASL_USERNAME", "service")
    monkeypatch.setenv("MODEL_TRAINER_WORKERS", "1")
    pool = WorkerPool(1, 1, "warning", "json")
    await pool.start()
    try:
        [pid] = pool.worker_pids()
        raw = await asyncio.to_thread(Path(f"/proc/{pid}/environ").read_bytes)
        environ = raw.split(b"\0")
    finally:
        with capture_logs() as logs:
            await pool.stop()
    # And the idle worker ended on its own when the pool closed its pipe, while the pool's
    # reader thread was blocked reading it (it was killed after 10 s, before hang_up).
    assert [line["event"] for line in logs if "killed" in line["event"]] == []
    names = sorted(entry.split(b"=", 1)[0].decode() for entry in environ if entry)
    assert [n for n in names if n.startswith("MODEL_TRAINER_KAFKA_")] == []
    assert "MODEL_TRAINER_WORKERS" in names  # the service's other settings still pass
    assert not any(PASSWORD.encode() in entry for entry in environ)
    assert os.environ["MODEL_TRAINER_KAFKA_SASL_PASSWORD"] == PASSWORD  # the service's own
