"""The service: the thin async shell around the job book.

Commands, worker messages, rebalances and a clock go into the :class:`~.book.JobBook`; its
effects come out as transactions (:mod:`.publisher`, one producer per owned partition, which
is how a partition's next owner fences this one) and pool orders (:mod:`.pool`). A job's files
are checked off the event loop, within ``admission_timeout_s``, so heartbeats never wait on a
disk. One anyio task group runs every loop (a failing task fails the service);
``shutdown_grace_s`` bounds stop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial

import anyio
import structlog
from aiokafka import TopicPartition
from model_trainer_client.kafka import partition_for_key
from model_trainer_contracts import ModelTrainerError, ModelTrainerErrorCode, SubmitJobV1

from model_trainer.book.book import JobBook
from model_trainer.book.effects import Effect, Kill, Publish, Run, Stop
from model_trainer.book.records import TP, Record
from model_trainer.core.admission import admit
from model_trainer.core.layout import DOWNLOADS
from model_trainer.core.remote_folders import use_downloads
from model_trainer.core.tenancy import DEFAULT_TENANT, tenant_root
from model_trainer.metrics import JOBS
from model_trainer.settings import Settings
from model_trainer.shell.budgets import admit_limits
from model_trainer.shell.consumer import (
    BrokerWatch,
    CommandConsumer,
    record_lag,
)
from model_trainer.shell.journal import journal, policy_of
from model_trainer.shell.kafka import command_record
from model_trainer.shell.marker import CrashMarkers
from model_trainer.shell.ports import Edges
from model_trainer.shell.sweeper import sweeping
from model_trainer.shell.threads import run_in_daemon_thread
from model_trainer.shell.wire import records

log = structlog.get_logger(__name__)
TICK_S = 0.25
ADOPT_TRIES = 5  # an assignment whose catch-up keeps failing stops the service (exit non-zero)


class AssignmentFailedError(RuntimeError):
    """Partitions were assigned but could not be taken up: never serve them paused."""


class TrainerService:
    """One instance of the service. ``await run(stop)`` serves until ``stop`` is set.

    ``edges`` says how it reaches Kafka, its pool and the clock (:mod:`.ports`); by default
    the real ones."""

    def __init__(self, settings: Settings, edges: Edges | None = None) -> None:
        self.settings = settings
        self.edges = edges = edges or Edges()
        self._now = edges.clock
        # Acceptance checks a model folder at a URL from a head copy (no weights fetched).
        use_downloads(settings.artifacts_root / DOWNLOADS, full=False)
        self.pool = edges.pool(settings)
        self.job_logs = edges.logs(settings)
        self.pool.on_log = self.job_logs.add
        self.publisher = edges.publishers(settings, self._owns)
        self.book = JobBook(
            policy_of(settings), self._admit, self.publisher.behind, partitioner=partition_for_key
        )
        self.state = edges.state(settings, self.book.load, self.book.forget)
        self.markers = CrashMarkers(settings.artifacts_root / ".handling" / settings.group_id)
        self._consumers = edges.consumers
        self.consumer: CommandConsumer | None = None
        self.started = anyio.Event()
        self.unpublished = 0
        self.broker = BrokerWatch()
        self.broker_problem: str | None = None  # why the broker cannot be used (/readyz)
        self._changed = anyio.Event()
        self._paused = False
        self._catching_up: set[TP] = set()
        self._fenced: set[TP] = set()  # lost to a fence; not served until assigned again
        self._skipped: set[TP] = set()  # records passed over while not ours to act on
        self._rebalancing = anyio.Lock()
        self._assigned_send, self._assigned = anyio.create_memory_object_stream[set[TP]](math.inf)
        self._admissions = anyio.CapacityLimiter(2)

    def _broker_problem(self, why: str | None) -> None:
        self.broker_problem = why

    def _admit(self, job: SubmitJobV1, tenant: str = DEFAULT_TENANT) -> None:
        """Admission of ``tenant``'s job: the artifacts it names are looked for in the
        tenant's own folder, so another tenant's are not there to find."""
        settings = self.settings
        admit(
            job,
            data_root=settings.data_root,
            artifacts_root=tenant_root(settings.artifacts_root, tenant),
            cuda_available=self.pool.cuda or None,
            shared_artifacts=settings.shared_artifacts,
            memory_budget_mb=settings.worker_memory_budget_mb if settings.memory_check else None,
            max_corpus_bytes=settings.max_corpus_bytes,
        )
        admit_limits(job, settings)

    async def _owns(self, tp: TP) -> bool:
        return self.consumer is not None and await self.consumer.owns(tp)

    async def run(self, stop: anyio.Event) -> None:
        settings = self.settings
        await self.edges.wait_for_broker(settings, self._broker_problem)
        if settings.create_topics:
            await self.edges.ensure_topics(settings)
        self.markers.load()
        await self.state.start()
        await self.pool.start()
        self.consumer = self._consumers(settings, self)
        await self.consumer.start()
        try:
            async with anyio.create_task_group() as tasks:
                for loop in (
                    self.publisher.run,
                    self.job_logs.run,
                    self._adoptions,
                    self._fences,
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
                log.info("service started", commands_topics=settings.tenancy.topics())
                await stop.wait()
                consuming.cancel()
                await self._drain()
                tasks.cancel_scope.cancel()
        finally:  # each step bounded: the broker may be away
            with anyio.CancelScope(shield=True):
                await self.pool.stop(timeout_s=2)
                closings = (self.consumer.stop, self.publisher.stop, self.state.stop)
                for closing in (*closings, self.job_logs.stop):
                    with anyio.move_on_after(3):
                        await closing()
            log.info("service stopped", unpublished=self.unpublished)

    async def _drain(self) -> None:
        """Checkpoint running jobs (killed after the grace) and publish what they said."""
        grace = self.settings.shutdown_grace_s
        log.info("shutting down", running=self.book.running(), queued=self.book.queued())
        with anyio.move_on_after(max(1.0, grace - 3)):
            self._apply(self.book.shutdown(self._now()))
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
                outgoing = records(effect, self.settings)
                committed = self.publisher.publish(effect.via, outgoing, commits)
                journal(effect, self.settings, committed)
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
                        record = command_record(message)
                        if record.tp in self._fenced or record.tp in self._catching_up:
                            self._skipped.add(record.tp)  # read again from the commit
                            continue
                        await self._handle(record)
                self._backpressure(consumer)

    async def _handle(self, record: Record) -> None:
        """One command: nothing it holds or raises stops the service. Its files are checked
        off the event loop; a command being handled when the process died is refused."""
        if self.markers.crashed_on(record):
            error = ModelTrainerError(
                ModelTrainerErrorCode.COMMAND_CRASHED,
                f"the service died while handling this command (offset {record.offset}); "
                "it is not handled again",
            )
            self._apply(self.book.refuse(record, error, self._now()))
            return
        with self.markers.handling(record):
            verdict: ModelTrainerError | None = None
            spec = self.book.admits(record)
            if spec is not None:
                tenant = self.book.tenant_of(record.topic) or DEFAULT_TENANT
                verdict = await self._check_files(spec, tenant)
            try:
                effects = self.book.command(record, self._now(), admit=_verdict(verdict))
            except Exception as exc:  # a bug in the book must not stop every instance
                log.exception("handling a command raised", offset=record.offset)
                error = ModelTrainerError(
                    ModelTrainerErrorCode.INTERNAL_ERROR,
                    f"handling the command raised {type(exc).__name__}: {exc}"[:1000],
                )
                effects = self.book.refuse(record, error, self._now())
            self._apply(effects)

    async def _check_files(self, spec: SubmitJobV1, tenant: str) -> ModelTrainerError | None:
        """Admission in a thread, bounded: a slow disk refuses the job, never stalls the loop
        (at most two at a time; a thread still stuck past the bound is abandoned, and being a
        daemon it cannot keep the process from exiting)."""
        limit = self.settings.admission_timeout_s
        try:
            with anyio.fail_after(limit):
                async with self._admissions:
                    await run_in_daemon_thread(partial(self._admit, spec, tenant), "admission")
        except TimeoutError:
            return ModelTrainerError(
                ModelTrainerErrorCode.ADMISSION_TIMEOUT,
                f"checking the job's files took longer than {limit:g}s",
                details={"admission_timeout_s": limit},
            )
        except ModelTrainerError as refused:
            return refused
        except Exception as exc:  # the book turns it into the job's typed refusal
            return ModelTrainerError(
                ModelTrainerErrorCode.INTERNAL_ERROR,
                f"the job could not be checked: {type(exc).__name__}: {exc}"[:1000],
                details={"exception": type(exc).__name__},
            )
        return None

    def _backpressure(self, consumer: CommandConsumer) -> None:
        full = self.book.queued() >= self.settings.queue_size and self.book.free_slots() == 0
        if full != self._paused:
            (consumer.pause if full else consumer.resume)(
                *(consumer.assignment() - self._catching_up - self._fenced)
            )
            self._paused = full
            log.info("partitions paused: queue full" if full else "partitions resumed")

    async def _pool_messages(self) -> None:
        while True:
            self._apply(self.book.report(await self.pool.messages.get(), self._now()))

    async def _clock(self) -> None:
        probed = lagged = 0.0
        while True:
            await anyio.sleep(TICK_S)
            now = time.monotonic()
            self._apply(self.book.tick(self._now()))
            if self.consumer is not None and now - probed > 5:
                probed = now
                await self.broker.check(self.consumer, now)
            if self.consumer is not None and now - lagged > 10:
                lagged = now
                await record_lag(self.consumer)

    async def on_revoked(self, tps: set[TP]) -> None:
        """Hand back the jobs of ``tps`` before the partitions go: bounded by the grace. What
        is still unpublished then is dropped with the partition's producer: its commands stay
        uncommitted and the next owner, whose producer fences this one, acts on them."""
        partitions = sorted(tp.partition for tp in tps)
        async with self._rebalancing:
            self._catching_up -= tps
            if tps:  # aiokafka calls this with nothing on a first join
                log.info("handing back partitions", partitions=partitions)
            self._apply(self.book.revoke(tps, self._now()))
            with anyio.move_on_after(self.settings.handback_grace_s + 5):
                await self._until(lambda: not self.book.handing_back(tps))
            limit = self.settings.handback_flush_timeout_s
            with anyio.move_on_after(limit):
                await self.publisher.flush(tps)
            unsent = self.publisher.pending_in(tps)
            if unsent:
                log.warning(
                    "hand-back flush timed out",
                    partitions=partitions,
                    batches=unsent,
                    timeout_s=limit,
                )
            self._apply(self.book.release(tps))
            await self.publisher.close(tps)
            log.info("partitions revoked", partitions=partitions)

    async def on_assigned(self, tps: set[TP]) -> None:
        """Pause ``tps`` and take them up in :meth:`_adoptions`: aiokafka runs this callback
        with heartbeats held and swallows its errors, so nothing slow or failing runs here."""
        self._catching_up |= tps
        if self.consumer is not None:
            self.consumer.pause(*tps)
        self._assigned_send.send_nowait(set(tps))

    async def _adoptions(self) -> None:
        async for tps in self._assigned:
            for attempt in range(1, ADOPT_TRIES + 1):
                try:
                    await self._adopt(tps)
                    break
                except Exception as exc:  # retried; past the tries the service stops
                    log.warning("taking up partitions failed", attempt=attempt, error=repr(exc))
                    if attempt == ADOPT_TRIES:
                        raise AssignmentFailedError(
                            f"partitions {sorted(tp.partition for tp in tps)} could not be "
                            f"taken up after {ADOPT_TRIES} tries: {exc!r}"
                        ) from exc
                    await anyio.sleep(min(2.0**attempt, 15.0))

    async def _adopt(self, tps: set[TP]) -> None:
        """Fence the previous owner (our producers start), then read what it committed: its
        last state records and, for a job it was running, its events since; then serve."""
        consumer = self.consumer
        assert consumer is not None
        async with self._rebalancing:
            tps = tps & consumer.assignment() & self._catching_up  # not revoked meanwhile
            if not tps:
                return
            await self.publisher.open(tps)
            await self.state.catch_up()
            self.book.published(await self.state.published_seqs(self.book.unsure(tps)))
            self.book.partition_count = consumer.partition_count(self.settings.commands_topic)
            for topic in self.settings.tenancy.topics():
                self.book.partition_counts[topic] = consumer.partition_count(topic)
            self.book.assign(tps, await consumer.committed(tps))
            for tp in tps & self._skipped:
                await consumer.rewind(tp)
            self._skipped -= tps
            self._fenced -= tps
            self._catching_up -= tps
            if not self._paused:
                consumer.resume(*tps)
            log.info("partitions assigned", partitions=sorted(tp.partition for tp in tps))

    async def _fences(self) -> None:
        """A partition whose producer was fenced is another instance's now: its jobs are
        dropped here (their runs killed, nothing they say published). If the group still
        gives it to us (the fence was a transaction the broker timed out), take it up again."""
        while True:
            tp = await self.publisher.fenced.get()
            async with self._rebalancing:
                self._fenced.add(tp)
                self._apply(self.book.release({tp}))
                await self.publisher.close({tp})
            if self.consumer is not None and await self.consumer.owns(tp):
                self._catching_up.add(tp)
                self.consumer.pause(tp)
                self._assigned_send.send_nowait({tp})


def _verdict(refusal: ModelTrainerError | None) -> Callable[[SubmitJobV1], None]:
    """The book's admission of one job, decided beforehand by the shell."""

    def admitted(_spec: SubmitJobV1) -> None:
        if refusal is not None:
            raise refusal

    return admitted
