"""The service: the thin async shell around the job book.

Commands, worker messages, rebalances and a clock go into the :class:`~.book.JobBook`; its
effects come out as transactions (:mod:`.publisher`) and pool orders (:mod:`.pool`). One anyio
task group runs every loop (a failing task fails the service); ``shutdown_grace_s`` bounds stop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import structlog
from aiokafka import TopicPartition
from model_trainer_contracts import SubmitJobV1

from .book import JobBook
from .consumer import BrokerWatch, CommandConsumer, ConsumerFactory, kafka_consumer, record_lag
from .core.admission import admit
from .effects import Effect, Kill, Publish, Run, Stop
from .journal import journal, policy_of
from .kafka import command_record, ensure_topics, wait_for_broker
from .metrics import JOBS
from .pool import WorkerPool
from .publisher import Publisher
from .records import TP
from .settings import Settings
from .state import StateReader
from .sweeper import sweeping

log = structlog.get_logger(__name__)
TICK_S = 0.25


class TrainerService:
    """One instance of the service. ``await run(stop)`` serves until ``stop`` is set."""

    def __init__(self, settings: Settings, consumers: ConsumerFactory = kafka_consumer) -> None:
        self.settings = settings
        self.pool = WorkerPool.for_settings(settings)
        self.publisher = Publisher(settings, transactional_id=settings.transactional_id)
        self.book = JobBook(policy_of(settings), self._admit, self.publisher.behind)
        self.state = StateReader(settings, self.book.load, self.book.forget)
        self._consumers = consumers
        self.consumer: CommandConsumer | None = None
        self.started = anyio.Event()
        self.unpublished = 0
        self.broker = BrokerWatch()
        self.broker_problem: str | None = None  # why the broker cannot be used (/readyz)
        self._changed = anyio.Event()
        self._paused = False
        self._catching_up: set[TP] = set()

    def _broker_problem(self, why: str | None) -> None:
        self.broker_problem = why

    def _admit(self, job: SubmitJobV1) -> None:
        settings = self.settings
        admit(
            job,
            data_root=settings.data_root,
            artifacts_root=settings.artifacts_root,
            cuda_available=self.pool.cuda or None,
            shared_artifacts=settings.shared_artifacts,
            memory_budget_mb=settings.worker_memory_budget_mb if settings.memory_check else None,
            max_corpus_bytes=settings.max_corpus_bytes,
        )

    async def run(self, stop: anyio.Event) -> None:
        settings = self.settings
        await wait_for_broker(settings.connection, timeout_s=60, on_problem=self._broker_problem)
        if settings.create_topics:
            await ensure_topics(settings)
        await self.state.start()
        await self.publisher.start()
        await self.pool.start()
        self.consumer = self._consumers(settings, self)
        await self.consumer.start()
        try:
            async with anyio.create_task_group() as tasks:
                for loop in (
                    self.publisher.run,
                    self.pool.supervise,
                    self.state.follow,
                    self._pool_messages,
                    self._clock,
                    sweeping(settings, self.book, self.publisher),
                ):
                    tasks.start_soon(loop)
                consuming = anyio.CancelScope()
                tasks.start_soon(self._consume, consuming)
                self.started.set()
                log.info("service started", commands_topic=settings.commands_topic)
                await stop.wait()
                consuming.cancel()
                await self._drain()
                tasks.cancel_scope.cancel()
        finally:  # each step bounded: the broker may be away
            with anyio.CancelScope(shield=True):
                await self.pool.stop(timeout_s=2)
                for closing in (self.consumer.stop, self.publisher.stop, self.state.stop):
                    with anyio.move_on_after(3):
                        await closing()
            log.info("service stopped", unpublished=self.unpublished)

    async def _drain(self) -> None:
        """Checkpoint running jobs (killed after the grace) and publish what they said."""
        grace = self.settings.shutdown_grace_s
        log.info("shutting down", running=self.book.running(), queued=self.book.queued())
        with anyio.move_on_after(max(1.0, grace - 3)):
            self._apply(self.book.shutdown(time.time()))
            await self._until(lambda: not self.book.handing_back())
        with anyio.move_on_after(2):
            await self.publisher.flush()
        # What is left stays unpublished, its commands uncommitted: the next owner resumes.
        self.unpublished = self.publisher.pending
        if self.unpublished:
            log.error("stopping with batches unpublished", batches=self.unpublished)

    async def _until(self, done: Callable[[], bool]) -> None:
        while not done():
            self._changed = anyio.Event()
            await self._changed.wait()

    def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Publish):
                commits = {TopicPartition(*tp): off for tp, off in effect.commits.items()}
                journal(effect, self.settings, self.publisher.publish([*effect.records], commits))
            elif isinstance(effect, Run):
                self.pool.run(effect.job_id, effect.order)
            elif isinstance(effect, Stop):
                self.pool.request_stop(effect.job_id, effect.reason)
            elif isinstance(effect, Kill):
                self.pool.kill(effect.job_id, effect.attempt)
        self._changed.set()
        JOBS.labels(state="running").set(len(self.book.running()))
        JOBS.labels(state="queued").set(self.book.queued())

    async def _consume(self, scope: anyio.CancelScope) -> None:
        consumer = self.consumer
        assert consumer is not None
        with scope:
            while True:
                # Take no more than the queue has room for, so its bound holds within a batch.
                room = self.settings.queue_size - self.book.queued() + self.book.free_slots()
                batches = await consumer.getmany(timeout_ms=200, max_records=max(1, min(room, 100)))
                for messages in batches.values():
                    for message in messages:
                        self._apply(self.book.command(command_record(message), time.time()))
                self._backpressure(consumer)

    def _backpressure(self, consumer: CommandConsumer) -> None:
        full = self.book.queued() >= self.settings.queue_size and self.book.free_slots() == 0
        if full != self._paused:
            (consumer.pause if full else consumer.resume)(
                *(consumer.assignment() - self._catching_up)
            )
            self._paused = full
            log.info("partitions paused: queue full" if full else "partitions resumed")

    async def _pool_messages(self) -> None:
        while True:
            self._apply(self.book.report(await self.pool.messages.get(), time.time()))

    async def _clock(self) -> None:
        probed = lagged = 0.0
        while True:
            await anyio.sleep(TICK_S)
            now = time.monotonic()
            self._apply(self.book.tick(time.time()))
            if self.consumer is not None and now - probed > 5:
                probed = now
                await self.broker.check(self.consumer, now)
            if self.consumer is not None and now - lagged > 10:
                lagged = now
                await record_lag(self.consumer)

    async def on_revoked(self, tps: set[TP]) -> None:
        """Hand back the jobs of ``tps`` before the partitions go: bounded by the grace."""
        self._apply(self.book.revoke(tps, time.time()))
        with anyio.move_on_after(self.settings.handback_grace_s + 5):
            await self._until(lambda: not self.book.handing_back(tps))
        with anyio.move_on_after(5):
            await self.publisher.flush()
        self._apply(self.book.release(tps))
        log.info("partitions revoked", partitions=sorted(tp.partition for tp in tps))

    async def on_assigned(self, tps: set[TP]) -> None:
        # No command of these partitions before the previous owner's last state records.
        self._catching_up |= tps
        if self.consumer is not None:
            self.consumer.pause(*tps)
        await self.state.catch_up()  # then the events since a running job's state record:
        self.book.published(await self.state.published_seqs(self.book.unsure(tps)))
        self.book.assign(tps)
        self._catching_up -= tps
        if self.consumer is not None and not self._paused:
            self.consumer.resume(*tps)
        log.info("partitions assigned", partitions=sorted(tp.partition for tp in tps))
