"""Workers killed, cancels, duplicates, floods and back-pressure, against the real broker and
real training."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter

import pytest
from local_service import ServiceProcess, Stack
from model_trainer_client import CommandSender, EventWatcher
from model_trainer_contracts import (
    CancelJobV1,
    CompletedEventV1,
    ConfigEventV1,
    FailedEventV1,
    ModelTrainerErrorCode,
    SubmitJobV1,
)

from .flows import (
    assert_seq_contiguous,
    logged,
    long_job,
    of,
    send,
    wait_for_step,
)

pytestmark = pytest.mark.kafka


async def test_worker_killed_mid_job_retries_and_pool_serves_next(stack: Stack) -> None:
    svc = ServiceProcess(stack, max_attempts="2").start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, long_job(stack, "wk-1", steps=200))
            await wait_for_step(watcher, "wk-1", 30, timeout_s=120)
            victims = svc.worker_pids()
            assert len(victims) == 1
            os.kill(victims[0], signal.SIGKILL)
            events = await watcher.until_terminal("wk-1", timeout_s=300)
            await send(stack, long_job(stack, "wk-2", steps=20))
            after = await watcher.until_terminal("wk-2", timeout_s=180)
        assert svc.worker_pids()
        assert svc.worker_pids() != victims
        assert "model_trainer_worker_restarts_total 1.0" in svc.metrics()
    finally:
        svc.stop()
    assert isinstance(events[-1], CompletedEventV1), events[-1]
    configs = [e for e in events if isinstance(e, ConfigEventV1)]
    assert [c.attempt for c in configs] == [1, 2]
    assert configs[1].start_step >= 10
    assert_seq_contiguous(events)
    assert isinstance(after[-1], CompletedEventV1)


async def test_worker_deaths_past_the_policy_end_with_run_worker_died(stack: Stack) -> None:
    svc = ServiceProcess(stack, max_attempts="1").start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, long_job(stack, "wk-die", steps=300))
            await wait_for_step(watcher, "wk-die", 10, timeout_s=120)
            os.kill(svc.worker_pids()[0], signal.SIGKILL)
            events = await watcher.until_terminal("wk-die", timeout_s=120)
    finally:
        svc.stop()
    failed = events[-1]
    assert isinstance(failed, FailedEventV1)
    assert failed.code is ModelTrainerErrorCode.RUN_WORKER_DIED
    assert failed.retryable


async def test_running_job_cancelled_within_five_seconds(stack: Stack) -> None:
    svc = ServiceProcess(stack).start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, long_job(stack, "cx-1", steps=5000))
            await wait_for_step(watcher, "cx-1", 4, timeout_s=120)
            loop = asyncio.get_running_loop()
            sent = loop.time()
            await send(stack, CancelJobV1(job_id="cx-1", reason="test"))
            events = await watcher.until_terminal("cx-1", timeout_s=30)
            took = loop.time() - sent
            await send(stack, CancelJobV1(job_id="cx-1"), CancelJobV1(job_id="cx-unknown"))
            again = await watcher.until_terminal("cx-unknown", timeout_s=30)
    finally:
        svc.stop()
    failed = events[-1]
    assert isinstance(failed, FailedEventV1)
    assert failed.code is ModelTrainerErrorCode.TRAINING_CANCELLED
    assert took < 5.0, f"cancel took {took:.1f}s"
    # The run checkpointed as it stopped; the checkpoints went once its end was committed.
    assert [c for c in logged(svc, "engine.checkpoint") if c.get("job_id") == "cx-1"]
    assert not (stack.artifacts_root / "cx-1" / "checkpoints").exists()
    unknown = again[-1]
    assert isinstance(unknown, FailedEventV1)
    assert unknown.code is ModelTrainerErrorCode.JOB_NOT_FOUND
    assert unknown.details.get("command_rejected") is True
    finished = [e for e in of(watcher, "cx-1") if isinstance(e, FailedEventV1)]
    assert [e.code for e in finished][-1] is ModelTrainerErrorCode.JOB_NOT_FOUND


async def test_duplicates_conflicts_and_timeouts(stack: Stack) -> None:
    svc = ServiceProcess(stack).start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            job = long_job(stack, "dup-1", steps=10)
            await send(stack, job)
            await watcher.until_terminal("dup-1", timeout_s=120)
            await send(stack, job)  # same spec again: a no-op
            changed = SubmitJobV1.model_validate({**job.model_dump(), "labels": {"other": "spec"}})
            await send(stack, changed)
            conflict = await watcher.until_terminal("dup-1", timeout_s=60)
            slow = SubmitJobV1.model_validate(
                {**long_job(stack, "to-1", steps=100_000).model_dump(), "timeout_s": 3}
            )
            await send(stack, slow)
            timed_out = await watcher.until_terminal("to-1", timeout_s=120)
    finally:
        svc.stop()
    dup_events = of(watcher, "dup-1")
    assert sum(isinstance(e, CompletedEventV1) for e in dup_events) == 1
    assert sum(isinstance(e, ConfigEventV1) for e in dup_events) == 1, "ran twice"
    rejection = [e for e in dup_events if isinstance(e, FailedEventV1)]
    assert [e.code for e in rejection] == [ModelTrainerErrorCode.JOB_ID_CONFLICT]
    assert conflict
    failed = timed_out[-1]
    assert isinstance(failed, FailedEventV1)
    assert failed.code is ModelTrainerErrorCode.TRAINING_TIMEOUT


async def test_flood_of_malformed_commands(stack: Stack) -> None:
    svc = ServiceProcess(stack, workers="1", max_command_bytes="4096").start()
    good = [long_job(stack, f"flood-{i}", steps=6) for i in range(5)]
    huge = json.dumps(
        {**good[0].model_dump(mode="json"), "job_id": "flood-huge", "pad": "x" * 5000}
    )
    not_ready = 0
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            async with CommandSender(stack.bootstrap, stack.commands_topic) as sender:
                for i in range(200):
                    if i % 40 == 0:
                        await sender.send(good[i // 40])
                    payload = [b"{", b"\x00\x01", b"[]", json.dumps({"type": "nope"}).encode()]
                    await sender.send_raw(payload[i % 4] + str(i).encode(), key=f"bad-{i}".encode())
                    if i % 20 == 0 and not svc.ready():
                        not_ready += 1
                await sender.send_raw(huge.encode(), key=b"flood-huge")
            too_large = await watcher.until_terminal("flood-huge", timeout_s=60)
            for job in good:
                events = await watcher.until_terminal(job.job_id, timeout_s=180)
                assert isinstance(events[-1], CompletedEventV1), events[-1]
                if not svc.ready():
                    not_ready += 1
        metrics = svc.metrics()
    finally:
        svc.stop()
    letters = Counter(
        line.split()[0]
        for line in metrics.splitlines()
        if line.startswith("model_trainer_dead_letters_total")
    )
    total = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("model_trainer_dead_letters_total")
    )
    assert total == 201, letters
    assert 'code="COMMAND_TOO_LARGE"} 1.0' in metrics
    rejected = too_large[-1]
    assert isinstance(rejected, FailedEventV1)
    assert rejected.code is ModelTrainerErrorCode.COMMAND_TOO_LARGE
    assert not_ready == 0


async def test_busy_pool_pauses_partitions_and_resumes(stack: Stack) -> None:
    svc = ServiceProcess(stack, queue_size="1").start()
    jobs = [long_job(stack, f"bp-{i}", steps=15) for i in range(4)]
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, *jobs)
            for job in jobs:
                events = await watcher.until_terminal(job.job_id, timeout_s=180)
                assert isinstance(events[-1], CompletedEventV1), events[-1]
    finally:
        svc.stop()
    said = [line.get("event") for line in svc.log_lines()]
    assert "partitions paused: queue full" in said
    assert "partitions resumed" in said
    starts = [line for line in svc.log_lines() if line.get("event") == "job accepted"]
    assert max(int(str(line["queued"])) for line in starts) <= 2
