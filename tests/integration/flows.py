"""Steps the integration tests share: send commands, wait for progress, read a job's events."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer
from local_service import ServiceProcess, Stack
from model_trainer_client import CommandSender, EventWatcher, is_terminal
from model_trainer_client.kafka import assign_whole_topic, committed_reader, to_record
from model_trainer_contracts import CancelJobV1, Event, ProgressEventV1, SubmitJobV1


def long_job(stack: Stack, job_id: str, steps: int = 400) -> SubmitJobV1:
    spec = stack.job(job_id, steps=steps)
    spec["training"] = {
        "max_steps": steps,
        "batch_size": 8,
        "eval_every": 50,
        "eval_batches": 2,
        "checkpoint_every": 10,
    }
    return SubmitJobV1.model_validate(spec)


async def send(stack: Stack, *commands: SubmitJobV1 | CancelJobV1) -> None:
    async with CommandSender(stack.bootstrap, stack.commands_topic) as sender:
        for command in commands:
            await sender.send(command)


async def wait_for_step(watcher: EventWatcher, job_id: str, step: int, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if any(
                isinstance(e, ProgressEventV1) and e.job_id == job_id and e.step >= step
                for e in watcher.seen
            ):
                return
            await watcher.poll()


async def wait_readiness(svc: ServiceProcess, *, ready: bool, timeout_s: float) -> bool:
    """Wait until the service's /readyz says ``ready``; False when it never did."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if await asyncio.to_thread(svc.ready) == ready:
            return True
        await asyncio.sleep(0.5)
    return False


def of(watcher: EventWatcher, job_id: str) -> list[Event]:
    return [e for e in watcher.seen if e.job_id == job_id]


def assert_seq_contiguous(events: list[Event]) -> None:
    """Seqs 0..n-1, each once: a list, so a reused seq fails as surely as a gap."""
    seqs = sorted(e.seq for e in events)
    told = [f"{e.seq}:{e.type.split('.')[2]}@{e.attempt}" for e in events]
    assert seqs == list(range(len(seqs))), f"seq gaps or reuse: {seqs}; seq:type@attempt {told}"


async def until_end(watcher: EventWatcher, job_id: str, timeout_s: float) -> list[Event]:
    """The job's events up to its terminal event (refusals of its commands do not end it)."""
    async with asyncio.timeout(timeout_s):
        while True:
            mine = [e for e in watcher.seen if e.job_id == job_id]
            if any(is_terminal(e) for e in mine):
                return mine
            await watcher.poll()


async def join_group_briefly(stack: Stack) -> None:
    """Join the service's consumer group with a plain consumer and leave again: every
    member's partitions are revoked (eager rebalancing), then handed back to it."""
    member = AIOKafkaConsumer(
        stack.commands_topic,
        bootstrap_servers=stack.bootstrap,
        group_id=f"group-{stack.uid}",
        enable_auto_commit=False,
        session_timeout_ms=10_000,
    )
    await member.start()
    try:
        async with asyncio.timeout(60):
            while not member.assignment():
                await member.getmany(timeout_ms=200)  # never commits: takes nothing over
    finally:
        await member.stop()


async def wait_log(svc: ServiceProcess, event: str, timeout_s: float, **fields: object) -> None:
    """Wait for a log line of the service with this event name (and these fields)."""
    async with asyncio.timeout(timeout_s):
        while True:
            lines = [line for line in svc.log_lines() if line.get("event") == event]
            if any(all(line.get(k) == v for k, v in fields.items()) for line in lines):
                return
            await asyncio.sleep(0.2)


def logged(svc: ServiceProcess, event: str) -> list[dict[str, object]]:
    return [line for line in svc.log_lines() if line.get("event") == event]


async def dead_letters(stack: Stack, count: int, wait_s: float = 60.0) -> list[dict[str, str]]:
    """The dead-letter topic's records (headers, ``value`` and ``key_bytes``), once ``count``
    are there or ``wait_s`` has passed."""
    consumer = committed_reader(stack.bootstrap)
    await consumer.start()
    try:
        assert await assign_whole_topic(consumer, stack.bootstrap, stack.dead_letter_topic)
        found: list[dict[str, str]] = []
        for _ in range(int(wait_s * 2)):
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    record = to_record(message)
                    headers = {k: v.decode() for k, v in record.headers}
                    headers["value"] = record.value.decode("utf-8", "replace")
                    headers["key_bytes"] = str(len(record.key or b""))
                    found.append(headers)
            if len(found) >= count:
                break
        return found
    finally:
        await consumer.stop()
