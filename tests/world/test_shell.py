"""The shell's behaviour, one test body in two worlds: the in-memory Kafka (default) and,
with ``--real-kafka``, the real broker with aiokafka's adapters. Both run the real
:class:`TrainerService` with the same scripted pool; what a test checks is what a client
reads: the committed events of each job."""

from __future__ import annotations

import anyio
import pytest
from model_trainer.book.records import TP
from model_trainer_client.kafka import partition_for_key
from model_trainer_contracts import (
    CompletedEventV1,
    EventBase,
    FailedEventV1,
    ProgressEventV1,
    QueuedEventV1,
    SubmitJobV1,
)

from .kafka import WorldConsumer
from .pool import Disk
from .stage import Instance, MemoryStage, OutageStage, Stage, until

TERMINAL = (CompletedEventV1, FailedEventV1)


def job(job_id: str, steps: int = 20) -> SubmitJobV1:
    return SubmitJobV1.model_validate(
        {
            "job_id": job_id,
            "user_id": 7,
            "backend": "char_lstm",
            "data": {"inline_text": "hello world " * 10},
            "training": {"max_steps": steps, "checkpoint_every": 5},
        }
    )


async def ended(stage: Stage, job_id: str) -> bool:
    return any(isinstance(event, TERMINAL) for event in await stage.events(job_id))


async def all_ended(stage: Stage, jobs: list[SubmitJobV1]) -> bool:
    return all([await ended(stage, spec.job_id) for spec in jobs])


def told_once(events: list[EventBase]) -> None:
    """Exactly one terminal event, last; seqs 0..n-1 in commit order (no gap, no reuse)."""
    assert [e.seq for e in events] == list(range(len(events))), [
        (e.seq, e.type, e.attempt) for e in events
    ]
    assert [isinstance(e, TERMINAL) for e in events].count(True) == 1
    assert isinstance(events[-1], CompletedEventV1), events[-1]


def steps_of(events: list[EventBase]) -> list[int]:
    return [e.step for e in events if isinstance(e, ProgressEventV1)]


def resumed(disk: Disk, job_id: str) -> list[int]:
    """The steps each run of the job started from."""
    return [start for name, _attempt, start in disk.runs if name == job_id]


async def test_a_job_runs_to_one_terminal_event(stage: Stage) -> None:
    async with anyio.create_task_group() as tasks:
        a = Instance(stage, "a")
        tasks.start_soon(a.run)
        await a.service.started.wait()
        await stage.submit(job("solo"))
        await until(lambda: ended(stage, "solo"), 60, "the job ends")
        await a.stop()
    events = await stage.events("solo")
    told_once(events)
    steps = steps_of(events)  # thinned by max_progress_per_s, never the last
    assert steps == sorted(set(steps)), steps
    assert steps[-1] == 20, steps


async def test_a_joining_instance_takes_its_share_and_the_jobs_resume(stage: Stage) -> None:
    jobs = [job(f"share-{n}", steps=30) for n in range(4)]
    stage.disk.hold_after = 10  # so no job ends before the rebalance
    async with anyio.create_task_group() as tasks:
        a = Instance(stage, "a", workers=4)
        tasks.start_soon(a.run)
        await a.service.started.wait()
        await stage.submit(*jobs)
        await until(lambda: _progressed(stage, [j.job_id for j in jobs], 10), 60, "steps")
        b = Instance(stage, "b", workers=4)
        tasks.start_soon(b.run)
        await until(lambda: _all_ran_again(stage.disk, jobs), 60, "every job runs again")
        stage.disk.hold_after = None
        await until(lambda: all_ended(stage, jobs), 90, "every job ends")
        await b.stop()
        await a.stop()
    for spec in jobs:
        told_once(await stage.events(spec.job_id))
    starts = [resumed(stage.disk, spec.job_id) for spec in jobs]
    # The rebalance handed every running job back (checkpointed), and it went on from there.
    assert all(s[0] == 0 and min(s[1:]) >= 10 for s in starts), starts


async def test_a_crashed_instance_jobs_are_replayed_and_resumed(stage: Stage) -> None:
    jobs = [job(f"crash-{n}", steps=30) for n in range(4)]
    stage.disk.hold_after = 20  # so no job ends before the crash
    async with anyio.create_task_group() as tasks:
        a = Instance(stage, "a", workers=4)
        b = Instance(stage, "b", workers=4)
        tasks.start_soon(a.run)
        await a.service.started.wait()
        tasks.start_soon(b.run)
        await b.service.started.wait()
        await stage.submit(*jobs)
        await until(lambda: _progressed(stage, [j.job_id for j in jobs], 20), 60, "steps")
        await a.crash()
        await until(lambda: _all_ran_again(stage.disk, jobs), 60, "every job runs again")
        stage.disk.hold_after = None
        await until(lambda: all_ended(stage, jobs), 90, "every job ends")
        await b.stop()
    for spec in jobs:
        told_once(await stage.events(spec.job_id))
    starts = [resumed(stage.disk, spec.job_id) for spec in jobs]
    # The crashed instance's jobs ran again from their last checkpoint, not from scratch.
    assert all(s[0] == 0 and min(s[1:]) >= 20 for s in starts), starts


async def _all_ran_again(disk: Disk, jobs: list[SubmitJobV1]) -> bool:
    return all(len(resumed(disk, spec.job_id)) >= 2 for spec in jobs)


async def _progressed(stage: Stage, job_ids: list[str], step: int) -> bool:
    for job_id in job_ids:
        if not [s for s in steps_of(await stage.events(job_id)) if s >= step]:
            return False
    return True


async def test_the_broker_away_then_back_loses_nothing(outage_stage: OutageStage) -> None:
    stage = outage_stage
    async with anyio.create_task_group() as tasks:
        a = Instance(stage, "a")
        tasks.start_soon(a.run)
        await a.service.started.wait()
        stage.disk.hold_after = 10
        await stage.submit(job("away", steps=60))
        await until(lambda: _progressed(stage, ["away"], 10), 60, "steps")
        async with stage.outage():
            # Transactions fail meanwhile; the run goes on, its events wait in memory.
            stage.disk.hold_after = None
            await anyio.sleep(1)
        await until(lambda: ended(stage, "away"), 120, "the job ends")
        await a.stop()
    told_once(await stage.events("away"))


async def test_a_full_queue_pauses_consumption(stage: Stage) -> None:
    jobs = [job(f"bp-{n}", steps=10) for n in range(5)]
    most = 0

    async def sample() -> None:
        nonlocal most
        while True:
            most = max(most, a.service.book.queued())
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as tasks:
        a = Instance(stage, "a", workers=1, queue_size=1)
        tasks.start_soon(a.run)
        await a.service.started.wait()
        tasks.start_soon(sample)
        await stage.submit(*jobs)
        await until(lambda: all_ended(stage, jobs), 90, "every job ends")
        await a.stop()
        tasks.cancel_scope.cancel()
    positions = []
    for spec in jobs:
        events = await stage.events(spec.job_id)
        told_once(events)
        positions += [e.position for e in events if isinstance(e, QueuedEventV1)]
    # One runs, one waits: the others stay on the topic, unread, until there is room.
    assert most == 1
    assert positions == [0] * len(jobs), positions


async def test_a_drained_instance_hands_its_job_to_the_next(stage: Stage) -> None:
    async with anyio.create_task_group() as tasks:
        a = Instance(stage, "a")
        tasks.start_soon(a.run)
        await a.service.started.wait()
        stage.disk.hold_after = 10  # so the job is still running when the drain comes
        await stage.submit(job("drained", steps=30))
        await until(lambda: _progressed(stage, ["drained"], 10), 60, "steps")
        await a.stop()
        assert a.service.unpublished == 0
        assert not await ended(stage, "drained")
        stage.disk.hold_after = None
        b = Instance(stage, "b")
        tasks.start_soon(b.run)
        await until(lambda: ended(stage, "drained"), 60, "the job ends")
        await b.stop()
    told_once(await stage.events("drained"))
    starts = resumed(stage.disk, "drained")
    assert len(starts) == 2, starts
    assert starts[1] >= 10, starts  # from the checkpoint the drain took, not from scratch


async def test_a_zombie_instance_is_fenced_and_commits_nothing_more(stage: Stage) -> None:
    """Only the world can pause a member in-process; on the real broker the same story is
    told with a stopped process (tests/integration/test_fencing.py)."""
    if not isinstance(stage, MemoryStage):
        pytest.skip("a zombie needs a paused process on a real broker: test_fencing.py")
    stage.disk.hold_after = 10
    async with anyio.create_task_group() as tasks:
        a = Instance(stage, "a")
        tasks.start_soon(a.run)
        await a.service.started.wait()
        await stage.submit(job("zombie", steps=30))
        await until(lambda: _progressed(stage, ["zombie"], 10), 60, "steps")
        consumer = a.service.consumer
        assert isinstance(consumer, WorldConsumer)
        consumer.evict()
        b = Instance(stage, "b")
        tasks.start_soon(b.run)
        await until(lambda: _all_ran_again(stage.disk, [job("zombie")]), 60, "it runs again")
        stage.disk.hold_after = None  # the zombie's run goes on too, and tries to publish
        await until(lambda: ended(stage, "zombie"), 60, "the job ends")
        mine = TP(a.service.settings.commands_topic, partition_for_key(b"zombie", 2))
        await until(lambda: _gave_up(a, mine), 10, "the zombie learns it was fenced")
        await b.stop()
        await a.stop()
    events = await stage.events("zombie")
    told_once(events)
    attempts = [e.attempt for e in events]
    assert attempts == sorted(attempts), attempts  # nothing of the zombie's after B's


async def _gave_up(instance: Instance, tp: TP) -> bool:
    return tp not in instance.service.publisher.owned()
