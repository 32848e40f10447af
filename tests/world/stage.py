"""Where the shell tests run: the in-memory world or a real broker, behind one interface.

A :class:`Stage` makes each instance's settings and edges (the same scripted pool in both,
:mod:`.pool`), sends commands as a client does and reads the events a client would read
(committed only). :class:`Instance` runs one :class:`TrainerService` in the test's task
group: drained (``stop``) or crashed (``crash``: cancelled, nothing handed back or flushed).
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol

import anyio
from aiokafka import AIOKafkaProducer
from local_kafka import LocalKafka
from model_trainer.book.records import Record
from model_trainer.settings import Settings
from model_trainer.shell.ports import Edges
from model_trainer.shell.service import TrainerService
from model_trainer_client.kafka import assign_whole_topic, committed_reader, to_record
from model_trainer_contracts import EventBase, SubmitJobV1, decode_event, encode

from .kafka import Kafka
from .pool import Disk, ScriptedPool

STEP_S = 0.02  # the scripted trainers' pace


class Stage(Protocol):
    name: str
    disk: Disk

    def settings(self, instance: str, **overrides: object) -> Settings: ...
    def edges(self) -> Edges: ...
    async def submit(self, *jobs: SubmitJobV1) -> None: ...
    async def records(self, topic: str) -> list[Record]: ...
    async def events(self, job_id: str) -> list[EventBase]: ...


class OutageStage(Stage, Protocol):
    def outage(self) -> AbstractAsyncContextManager[None]:
        """The broker away for the block's duration, then back."""
        ...


class _Base(ABC):
    def __init__(self, root: Path, bootstrap: str) -> None:
        uid = uuid.uuid4().hex[:8]
        self.root = root
        self.bootstrap = bootstrap
        self.disk = Disk()
        self.topics = {
            "commands_topic": f"w{uid}.jobs",
            "events_topic": f"w{uid}.events",
            "dead_letter_topic": f"w{uid}.dlq",
            "state_topic": f"w{uid}.state",
            "logs_topic": f"w{uid}.logs",
        }
        self.group_id = f"w{uid}"

    def settings(self, instance: str, **overrides: object) -> Settings:
        (self.root / "data").mkdir(exist_ok=True)
        return Settings.model_validate(
            {
                "bootstrap_servers": self.bootstrap,
                **self.topics,
                "group_id": self.group_id,
                "topic_partitions": 2,
                "workers": 1,
                "data_root": self.root / "data",
                "artifacts_root": self.root / instance,  # its own crash markers
                "http_port": 0,
                "memory_check": False,
                "disk_reserve_mb": 0,
                "checkpoint_every": 5,
                "shutdown_grace_s": 5.0,
                "handback_grace_s": 3.0,
                "state_every_s": 0.0,
                "session_timeout_ms": 6000,
                "heartbeat_interval_ms": 500,
                "rebalance_timeout_ms": 10_000,
                **overrides,
            }
        )

    @property
    def commands_topic(self) -> str:
        return self.topics["commands_topic"]

    @property
    def events_topic(self) -> str:
        return self.topics["events_topic"]

    @abstractmethod
    async def records(self, topic: str) -> list[Record]:
        """Every committed record of ``topic``."""

    async def events(self, job_id: str) -> list[EventBase]:
        """The job's committed events, as a client reads them."""
        return [
            decode_event(record.value)
            for record in await self.records(self.events_topic)
            if record.key == job_id.encode()
        ]


class MemoryStage(_Base):
    """The in-memory world: no server, seconds."""

    name = "memory"

    def __init__(self, root: Path) -> None:
        super().__init__(root, "world:9092")
        self.kafka = Kafka()

    def edges(self) -> Edges:
        return self.kafka.edges(ScriptedPool.factory(self.disk, STEP_S))

    async def submit(self, *jobs: SubmitJobV1) -> None:
        self.kafka.create_topic(self.commands_topic, 2)
        for job in jobs:
            self.kafka.append(self.commands_topic, encode(job), job.job_id.encode())

    async def records(self, topic: str) -> list[Record]:
        return self.kafka.read(topic)

    def outage(self) -> AbstractAsyncContextManager[None]:
        return _away(self.kafka)


@asynccontextmanager
async def _away(kafka: Kafka) -> AsyncIterator[None]:
    kafka.available = False
    try:
        yield
    finally:
        kafka.available = True


class RealStage(_Base):
    """A real broker (the session's), the real aiokafka adapters, the same scripted pool;
    given the broker's process (``broker``), it can stop and start it (:meth:`outage`)."""

    name = "kafka"

    def __init__(self, root: Path, bootstrap: str, broker: LocalKafka | None = None) -> None:
        super().__init__(root, bootstrap)
        self._broker = broker

    @asynccontextmanager
    async def outage(self) -> AsyncIterator[None]:
        broker = self._broker
        assert broker is not None, "a stage on the session's broker cannot stop it"
        await anyio.to_thread.run_sync(broker.stop)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(broker.start)

    def edges(self) -> Edges:
        return Edges(pool=ScriptedPool.factory(self.disk, STEP_S))

    async def submit(self, *jobs: SubmitJobV1) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            for job in jobs:
                await producer.send_and_wait(
                    self.commands_topic, encode(job), key=job.job_id.encode()
                )
        finally:
            await producer.stop()

    async def records(self, topic: str) -> list[Record]:
        """Every committed record of ``topic``, read to its end as it is now."""
        consumer = committed_reader(self.bootstrap)
        await consumer.start()
        try:
            tps = await assign_whole_topic(consumer, self.bootstrap, topic)
            ends = await consumer.end_offsets(tps)
            found: list[Record] = []
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    found += [to_record(message) for message in messages]
            return found
        finally:
            await consumer.stop()


class Instance:
    """One service instance, run in the test's task group."""

    def __init__(self, stage: Stage, name: str, **overrides: object) -> None:
        self.service = TrainerService(stage.settings(name, **overrides), stage.edges())
        self._stop = anyio.Event()
        self._scope = anyio.CancelScope()
        self.done = anyio.Event()

    async def run(self) -> None:
        try:
            with self._scope:
                await self.service.run(self._stop)
        finally:
            self.done.set()

    async def stop(self) -> None:
        """Drain: running jobs checkpoint and are handed back, everything published."""
        self._stop.set()
        await self.done.wait()

    async def crash(self) -> None:
        """Cancelled: nothing handed back, nothing more flushed (its process died)."""
        self._scope.cancel()
        await self.done.wait()


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    with anyio.move_on_after(timeout_s):
        while True:
            if await check():
                return
            await anyio.sleep(0.05)
    raise AssertionError(f"not within {timeout_s:g}s: {what}")
