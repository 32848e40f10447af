"""Kafka's fault paths with a broker of the test's own: shutdown while it is away, a crash
between a terminal event and its commit, records the broker refuses, and state that grows (on
the state topic, and on disk after crashes)."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from local_kafka import LocalKafka
from local_service import ServiceProcess, Stack
from model_trainer.settings import Settings
from model_trainer.shell.kafka import ensure_topics
from model_trainer_client import EventWatcher, is_terminal
from model_trainer_client.kafka import assign_whole_topic, committed_reader
from model_trainer_contracts import CompletedEventV1, ConfigEventV1, JobStateV1, JobStatus, encode

from tests.figures import Figure

from .flows import (
    assert_seq_contiguous,
    logged,
    long_job,
    of,
    send,
    until_end,
    wait_for_step,
    wait_log,
)

pytestmark = pytest.mark.kafka


@pytest.fixture
def own(tmp_path: Path, local_broker: LocalKafka) -> Iterator[tuple[Stack, LocalKafka]]:
    """A stack on the broker this module may stop; it is running again afterwards."""
    yield Stack(local_broker.bootstrap_servers, tmp_path), local_broker
    if local_broker.running_pid() is None:
        local_broker.start()


async def test_sigterm_with_the_broker_away_exits_in_time_and_the_job_resumes(
    own: tuple[Stack, LocalKafka], figure: Figure
) -> None:
    stack, broker = own
    svc = ServiceProcess(stack, instance_id="down", shutdown_grace_s="10").start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, long_job(stack, "away", steps=400))
            await wait_for_step(watcher, "away", 20, timeout_s=120)
        broker.stop()
        await asyncio.sleep(3)  # progress piles up unpublished
        asked = time.monotonic()
        code = await asyncio.to_thread(svc.terminate, 60.0)
        took = time.monotonic() - asked
    finally:
        svc.stop()
        broker.start()
    assert took <= 10 + 5, f"shutdown took {took:.1f}s with the broker away"
    assert code == 1, svc.tail()  # something was left unpublished
    figure(f"SIGTERM with the broker away: exit {code} after {took:.1f} s (grace 10 s)")
    again = ServiceProcess(stack, instance_id="down").start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await watcher.rewind()
            events = await until_end(watcher, "away", timeout_s=300)
    finally:
        again.stop()
    assert isinstance(events[-1], CompletedEventV1)
    configs = [e for e in events if isinstance(e, ConfigEventV1)]
    assert configs[-1].start_step >= 10, "did not resume from a checkpoint"
    assert_seq_contiguous(events)
    figure(f"after it the next instance resumed at step {configs[-1].start_step}, completed")


async def test_crash_between_the_terminal_event_and_its_commit_does_not_retrain(
    own: tuple[Stack, LocalKafka],
) -> None:
    stack, broker = own
    # Every progress event published at once: the broker must stop before the end, and
    # coalescing would show the watcher step 40 only with the completion.
    svc = ServiceProcess(stack, instance_id="tc", max_progress_per_s="1000").start()
    steps = 60
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await send(stack, long_job(stack, "late", steps=steps))
            await wait_for_step(watcher, "late", steps - 20, timeout_s=120)
        broker.stop()  # the completed event cannot be committed now
        await wait_log(svc, "job ended", timeout_s=120)
        svc.kill()
    finally:
        svc.stop()
        broker.start()
    again = ServiceProcess(stack, instance_id="tc").start()
    try:
        async with EventWatcher(stack.bootstrap, stack.events_topic) as watcher:
            await watcher.rewind()
            events = await until_end(watcher, "late", timeout_s=300)
            await asyncio.sleep(2)
            await watcher.poll()
    finally:
        again.stop()
    mine = of(watcher, "late")
    assert [isinstance(e, CompletedEventV1) for e in mine if is_terminal(e)] == [True]
    resumed = [e for e in events if isinstance(e, ConfigEventV1)][-1]
    assert resumed.attempt >= 2
    assert resumed.start_step == steps, "retrained instead of resuming from the final step"
    folder = stack.artifacts_root / "late"
    assert (folder / "manifest.json").is_file()
    assert not (folder / "checkpoints").exists(), "checkpoints kept after the commit"
    assert_seq_contiguous(mine)


async def _create_events_topic(stack: Stack, max_message_bytes: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        config = {"max.message.bytes": str(max_message_bytes)}
        await admin.create_topics([NewTopic(stack.events_topic, 4, 1, None, config)])
    finally:
        await admin.close()


def _healthz(svc: ServiceProcess) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{svc.http_port}/healthz", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_a_record_the_broker_refuses_is_never_dropped_from_a_commit(
    own: tuple[Stack, LocalKafka],
) -> None:
    stack, _broker = own
    await _create_events_topic(stack, max_message_bytes=2048)
    svc = ServiceProcess(stack, publish_stall_s="4").start()
    labels = {f"label-{i}": "v" * 200 for i in range(20)}  # every event of this job is > 4 KB
    try:
        await send(stack, long_job(stack, "fat", steps=10).model_copy(update={"labels": labels}))
        await asyncio.sleep(12)
        health = _healthz(svc)
        states = await _read(stack, f"state-{stack.uid}")
        events = await _read(stack, stack.events_topic)
    finally:
        svc.stop()
    assert health == 503, "the publisher cannot commit, yet /healthz says alive"
    # The transactions holding the job's events aborted: neither their state nor anything
    # else of them was committed without them.
    assert [s for s in states if b'"fat"' in s] == []
    assert [e for e in events if b'"fat"' in e] == []


async def _read(stack: Stack, topic: str) -> list[bytes]:
    reader = committed_reader(stack.bootstrap)
    await reader.start()
    values: list[bytes] = []
    try:
        await assign_whole_topic(reader, stack.bootstrap, topic)
        for _ in range(6):
            for records in (await reader.getmany(timeout_ms=500)).values():
                values += [bytes(r.value) for r in records if r.value is not None]
    finally:
        await reader.stop()
    return values


async def test_ten_thousand_ended_jobs_are_tombstoned_after_retention(
    own: tuple[Stack, LocalKafka], figure: Figure
) -> None:
    stack, _broker = own
    await ensure_topics(Settings.model_validate(stack.env()))
    old = datetime.now(UTC) - timedelta(days=30)
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, linger_ms=20)
    await producer.start()
    try:
        for i in range(10_000):
            state = JobStateV1(
                job_id=f"old-{i}",
                status=JobStatus.COMPLETED,
                request_digest="d",
                partition=i % 4,
                last_seq=3,
                submitted_at=old,
                updated_at=old,
            )
            await producer.send(f"state-{stack.uid}", encode(state), key=state.job_id.encode())
        await producer.flush()
    finally:
        await producer.stop()
    svc = ServiceProcess(stack, state_retention_s="86400").start()
    try:
        replayed = next(
            line for line in svc.log_lines() if line.get("event") == "job states replayed"
        )
        async with asyncio.timeout(120):
            while True:
                tombstones = await _tombstones(stack)
                if tombstones >= 10_000:
                    break
                await asyncio.sleep(2)
    finally:
        svc.stop()
    figure(f"state replay of {replayed.get('records')} records took {replayed.get('seconds')}s")
    assert replayed.get("records") == 10_000
    assert tombstones == 10_000


async def _tombstones(stack: Stack) -> int:
    reader = committed_reader(stack.bootstrap)
    await reader.start()
    count = 0
    try:
        await assign_whole_topic(reader, stack.bootstrap, f"state-{stack.uid}")
        for _ in range(10):
            for records in (await reader.getmany(timeout_ms=500, max_records=20_000)).values():
                count += sum(1 for r in records if r.value is None)
    finally:
        await reader.stop()
    return count


async def test_the_start_sweep_removes_what_crashes_left_on_disk(stack: Stack) -> None:
    """A crash between a terminal event's commit and its checkpoints' removal, a writer killed
    mid-write and a cache entry nobody uses: the next start deletes them, nothing else."""
    await ensure_topics(Settings.model_validate(stack.env()))
    now = datetime.now(UTC)
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap)
    await producer.start()
    try:
        for job_id, status in (("crashed", JobStatus.FAILED), ("resumable", JobStatus.RUNNING)):
            state = JobStateV1(
                job_id=job_id, status=status, request_digest="d", submitted_at=now, updated_at=now
            )
            await producer.send(f"state-{stack.uid}", encode(state), key=job_id.encode())
        await producer.flush()
    finally:
        await producer.stop()
    root = stack.artifacts_root
    hour_ago, week_ago = time.time() - 3700, time.time() - 8 * 24 * 3600
    planted = {
        "crashed/checkpoints/checkpoint.pt": time.time(),
        "resumable/checkpoints/checkpoint.pt": week_ago,
        "crashed/.manifest.json.4242.tmp": hour_ago,
        "resumable/.checkpoint.pt.99.tmp": time.time(),
        ".token-cache/unused.npy": week_ago,
        ".token-cache/unused.tokenizer.json": week_ago,
        ".token-cache/used.npy": time.time(),
    }
    for relative, mtime in planted.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"0" * 100)
        os.utime(root / relative, (mtime, mtime))
    svc = ServiceProcess(stack).start()
    try:
        await wait_log(svc, "artifacts swept", timeout_s=60)
        metrics = svc.metrics()
    finally:
        svc.stop()
    (line,) = logged(svc, "artifacts swept")  # the next one is an hour away
    assert (line["checkpoints"], line["temp"], line["token_cache"]) == (1, 1, 1)
    assert line["bytes_freed"] == 400
    left = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert left == {
        "resumable/checkpoints/checkpoint.pt",  # its job has not ended
        "resumable/.checkpoint.pt.99.tmp",  # a writer may still be writing it
        ".token-cache/used.npy",
    }
    assert 'model_trainer_swept_total{kind="checkpoints"} 1.0' in metrics
    assert 'model_trainer_swept_bytes_total{kind="token_cache"} 200.0' in metrics
