"""The shell's edges: everything :class:`~.service.TrainerService` needs from outside itself.

Commands come in through a consumer (:data:`~.consumer.ConsumerFactory`); events, state
records and offsets go out in transactions (:class:`PublishersPort`); the state topic is read
back (:class:`StateReaderPort`); runs go to a pool (:class:`PoolPort`); job log lines go out
best-effort (:class:`LogsPort`); the broker is waited for and its topics made; and the
book's clock is read. :class:`Edges` names one implementation of each. Its defaults are the
production adapters (aiokafka, worker processes, ``time.time``); the tests' in-memory world
(``tests/world``) hands the same shell its own, so the shell's behaviour is tested in-process
and, with the real adapters, against a real broker by the same test bodies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aiokafka import TopicPartition
from model_trainer_contracts import JobStateV1

from model_trainer.book.records import TP
from model_trainer.core.stop import StopReason
from model_trainer.pool.joblog import LogShipper
from model_trainer.pool.pool import WorkerPool
from model_trainer.pool.protocol import JobLog, RunOrder, RunReport
from model_trainer.settings import Settings
from model_trainer.shell.consumer import ConsumerFactory, kafka_consumer
from model_trainer.shell.kafka import ensure_topics, wait_for_broker
from model_trainer.shell.publisher import Publishers
from model_trainer.shell.state import StateReader
from model_trainer.shell.wire import Outgoing

Owns = Callable[[TP], Awaitable[bool]]
OnProblem = Callable[[str | None], None]


class PublishersPort(Protocol):
    """One transactional producer per owned commands partition (see :mod:`.publisher`):
    opening a partition's fences its previous owner; a fenced one's partition is put on
    :attr:`fenced`; a batch's future resolves once its transaction committed."""

    fenced: asyncio.Queue[TP]

    async def run(self) -> None: ...
    async def open(self, tps: Iterable[TP]) -> None: ...
    async def close(self, tps: Iterable[TP]) -> int: ...
    def owned(self) -> set[TP]: ...
    def publish(
        self, via: TP, records: list[Outgoing], offsets: dict[TopicPartition, int] | None = None
    ) -> asyncio.Future[None]: ...
    @property
    def pending(self) -> int: ...
    def pending_in(self, tps: Iterable[TP]) -> int: ...
    def behind(self) -> bool: ...
    @property
    def healthy(self) -> bool: ...
    @property
    def failing_since(self) -> float | None: ...
    async def flush(self, tps: Iterable[TP] | None = None) -> None: ...
    async def stop(self) -> None: ...


class StateReaderPort(Protocol):
    """The compacted state topic, replayed at start and followed (see :mod:`.state`)."""

    async def start(self) -> float: ...
    async def catch_up(self) -> None: ...
    async def follow(self) -> None: ...
    async def published_seqs(self, since: Mapping[str, float]) -> dict[str, int]: ...
    async def stop(self) -> None: ...


class PoolPort(Protocol):
    """Runs orders; each run ends in exactly one of JobEnded, JobPreempted or WorkerDied on
    :attr:`messages` (see :mod:`model_trainer.pool.pool`)."""

    messages: asyncio.Queue[RunReport]
    cuda: bool
    on_log: Callable[[JobLog], None]

    @property
    def serving(self) -> bool: ...
    async def start(self) -> None: ...
    async def supervise(self) -> None: ...
    def run(self, job_id: str, order: RunOrder) -> None: ...
    def request_stop(self, job_id: str, reason: StopReason) -> None: ...
    def kill(self, job_id: str, attempt: int) -> None: ...
    async def stop(self, timeout_s: float = 10.0) -> None: ...


class LogsPort(Protocol):
    """Job log lines, published best-effort (see :class:`~.pool.joblog.LogShipper`)."""

    def add(self, line: JobLog) -> None: ...
    async def run(self) -> None: ...
    async def stop(self, timeout_s: float = 2.0) -> None: ...


async def _wait_for_broker(settings: Settings, on_problem: OnProblem) -> None:
    await wait_for_broker(settings.connection, timeout_s=60, on_problem=on_problem)


@dataclass(frozen=True)
class Edges:
    """How the shell reaches each of its edges; the defaults are production's."""

    consumers: ConsumerFactory = kafka_consumer
    publishers: Callable[[Settings, Owns], PublishersPort] = Publishers
    state: Callable[
        [Settings, Callable[[JobStateV1], None], Callable[[str], None]], StateReaderPort
    ] = StateReader
    pool: Callable[[Settings], PoolPort] = WorkerPool.for_settings
    logs: Callable[[Settings], LogsPort] = LogShipper
    wait_for_broker: Callable[[Settings, OnProblem], Awaitable[None]] = _wait_for_broker
    ensure_topics: Callable[[Settings], Awaitable[None]] = ensure_topics
    clock: Callable[[], float] = time.time
