"""The producers: events, state records and offset commits, published in Kafka transactions.

Everything the service writes goes through :class:`Publishers`: one transactional producer
(:class:`Publisher`) per commands partition this instance owns, its ``transactional.id`` made
of the group, the topic and the partition. Fencing is Kafka's own: the partition's next owner
starts a producer with the same id, which aborts the old owner's open transaction and makes
every later one of its fail (``ProducerFenced``). So an instance that lost a partition (revoked,
or evicted while its process was paused) can never again commit an event, a state record or
an offset of that partition's jobs. A producer that failed for another reason is replaced
only once the consumer group confirms the partition is still ours (a generation-checked
offset commit): a paused instance that wakes up must not fence the rightful owner.

Writes are batched into one transaction at a time per partition, with the consumed offsets
they settle, so a terminal event, its job state and its command's offset commit land
together or not at all. While the broker is away batches wait in memory and are retried.

A failed transaction is sent again only once it is known not to have landed. Failing before
its commit was asked, it is aborted by the fresh producer that replaces ours. Failing while
its commit was under way (the broker went away, or answered too late), its outcome is
unknown: the coordinator may hold it as prepared, and then the fresh producer completes the
commit instead of aborting it. So the publisher looks its first record up with a
read_committed reader (:func:`landed`), and sends the batch again only if it is not there:
sending it blindly would put every event of the batch, seq and all, on the topic twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.abc
import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from model_trainer_client.kafka import committed_reader
from model_trainer_client.settings import client_kwargs
from model_trainer_contracts import Headers

from model_trainer.book.records import TP
from model_trainer.metrics import EVENTS_PUBLISHED, PUBLISH_RETRIES
from model_trainer.settings import PRODUCER_REQUEST_TIMEOUT_MS, TRANSACTION_BOUND_S, Settings
from model_trainer.shell.wire import Outgoing

log = structlog.get_logger(__name__)
MAX_BATCH = 500
REQUEST_TIMEOUT_MS = PRODUCER_REQUEST_TIMEOUT_MS
# Our own bound on one transaction; the broker's (transaction_timeout_ms) must be longer, or
# a slow broker would abort the transaction and bump the epoch: a fence we did not earn.
TRANSACTION_TIMEOUT_S = TRANSACTION_BOUND_S


class PublisherFencedError(RuntimeError):
    """Another process took this producer's transactional id: its partition is not ours."""


async def _always() -> bool:
    return True


def _retrieved(delivery: asyncio.Future[object]) -> None:
    if not delivery.cancelled():
        delivery.exception()


@dataclass(frozen=True)
class Landing:
    """Where a transaction's first record went, known once the broker acknowledged it."""

    topic: str
    partition: int
    offset: int


async def landed(settings: Settings, landing: Landing, timeout_s: float) -> bool | None:
    """Whether the record at ``landing`` is committed: True if a read_committed reader sees
    it, False if it reads past its offset without it (aborted), None if it cannot tell within
    ``timeout_s`` (the broker is away, or another producer's open transaction holds the
    partition's last stable offset below it) or the offset is not in the log at all."""
    tp = TopicPartition(landing.topic, landing.partition)
    consumer = committed_reader(settings.connection)
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.start()
            consumer.assign([tp])
            consumer.seek(tp, landing.offset)
            while True:
                for messages in (await consumer.getmany(tp, timeout_ms=200)).values():
                    for message in messages:
                        if message.offset < landing.offset:  # reset: the offset is not there
                            return None
                        return bool(message.offset == landing.offset)
                if await consumer.position(tp) > landing.offset:
                    return False
    except (KafkaError, OSError, TimeoutError):
        return None
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), timeout=5)


class TransactionalProducer(Protocol):
    """What a :class:`Publisher` uses of aiokafka's transactional producer."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def transaction(self) -> AbstractAsyncContextManager[object]: ...
    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[object]: ...
    async def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, int], group_id: str
    ) -> None: ...


ProducerFactory = Callable[[Settings, str], TransactionalProducer]
# Whether a transaction's first record is committed (see :func:`landed`), within seconds.
LandedCheck = Callable[[Settings, Landing, float], Awaitable[bool | None]]


def kafka_producer(settings: Settings, transactional_id: str) -> TransactionalProducer:
    """aiokafka's transactional, idempotent (acks=all) producer, not yet started."""
    producer: TransactionalProducer = AIOKafkaProducer(
        **client_kwargs(settings.connection),
        transactional_id=transactional_id,
        transaction_timeout_ms=settings.transaction_timeout_ms,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_request_size=4 * 1024 * 1024,
        request_timeout_ms=REQUEST_TIMEOUT_MS,
    )
    return producer


@dataclass
class _Item:
    records: list[Outgoing]
    offsets: dict[TopicPartition, int]
    done: asyncio.Future[None] = field(default_factory=asyncio.Future)


class Publisher:
    """A transactional, idempotent (acks=all) producer with an in-memory retry buffer."""

    def __init__(
        self,
        settings: Settings,
        transactional_id: str,
        owned: Callable[[], Awaitable[bool]] = _always,
        producers: ProducerFactory = kafka_producer,
        landed: LandedCheck = landed,
    ) -> None:
        self._settings = settings
        self._transactional_id = transactional_id
        self._owned = owned
        self._producers = producers
        self._landed_check = landed
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._producer: TransactionalProducer | None = None
        self._inflight = 0
        self.healthy = False
        self.failing_since: float | None = None  # monotonic time of the first failed commit

    def _new_producer(self) -> TransactionalProducer:
        return self._producers(self._settings, self._transactional_id)

    async def start(self) -> None:
        """Start the producer; :meth:`run` then publishes what is queued."""
        self._producer = self._new_producer()
        await self._producer.start()
        self.healthy = True

    def publish(
        self, records: list[Outgoing], offsets: dict[TopicPartition, int] | None = None
    ) -> asyncio.Future[None]:
        """Queue records (and offsets to commit with them); the future resolves once committed."""
        item = _Item(records, dict(offsets or {}))
        self._queue.put_nowait(item)
        return item.done

    @property
    def pending(self) -> int:
        """Batches not yet committed: queued, or in the transaction under way."""
        return self._queue.qsize() + self._inflight

    def behind(self) -> bool:
        """Whether ``MODEL_TRAINER_MAX_UNPUBLISHED`` batches wait: the book holds progress."""
        return self.pending >= self._settings.max_unpublished

    def abandon(self) -> int:
        """Drop every queued batch (the partition is no longer ours: its commands stay
        uncommitted, and the next owner acts on them); returns how many were dropped."""
        dropped = 0
        while not self._queue.empty():
            self._queue.get_nowait().done.cancel()
            dropped += 1
        return dropped

    async def flush(self) -> None:
        """Wait until everything queued so far is committed (at once when nothing is: the
        first rebalance comes before :meth:`run` has started)."""
        if self.pending:
            await self.publish([])

    async def run(self) -> None:
        """Publish queued batches, forever; raises PublisherFencedError if fenced."""
        while True:
            items = [await self._queue.get()]
            while not self._queue.empty() and len(items) < MAX_BATCH:
                items.append(self._queue.get_nowait())
            self._inflight = len(items)
            await self._commit(items)
            self._inflight = 0
            for item in items:
                if not item.done.done():
                    item.done.set_result(None)

    async def _commit(self, items: list[_Item]) -> None:
        records = [record for item in items for record in item.records]
        offsets: dict[TopicPartition, int] = {}
        for item in items:
            for tp, offset in item.offsets.items():
                offsets[tp] = max(offset, offsets.get(tp, 0))
        if not records and not offsets:
            return
        backoff, failures = 0.2, 0
        while True:
            committing: list[Landing] = []  # set once the commit is asked
            try:
                # Bounded: a transaction whose commit waits on a broker that went away
                # would otherwise wait for ever; a fresh producer ends it and we retry.
                async with asyncio.timeout(TRANSACTION_TIMEOUT_S):
                    await self._transaction(records, offsets, committing)
            except ProducerFenced as exc:
                self.healthy = False
                raise PublisherFencedError(str(exc)) from exc
            except Exception as exc:  # any failure: sent again unless it landed after all
                self.healthy = False
                PUBLISH_RETRIES.inc()
                failures += 1
                if self.failing_since is None:
                    self.failing_since = asyncio.get_running_loop().time()
                if failures == 1:  # one line per outage, not one per attempt
                    log.warning("publish failed; retrying", error=repr(exc), records=len(records))
                await self._replace_producer(backoff)
                backoff = min(backoff * 2, 5.0)
                if not committing or not await self._landed(committing[0]):
                    continue
                log.warning("the commit's answer was lost, but it landed", records=len(records))
            if failures:
                log.warning("publishing again", failed_attempts=failures)
            self.healthy, self.failing_since = True, None
            EVENTS_PUBLISHED.inc(len(records))
            return

    async def _landed(self, landing: Landing) -> bool:
        """Whether a transaction whose commit may have landed did: asked until the broker
        can tell (our fresh producer has ended it, so it is committed or aborted by now)."""
        wait = 0.2
        while True:
            found = await self._landed_check(self._settings, landing, TRANSACTION_TIMEOUT_S)
            if found is not None:
                return found
            log.warning("cannot tell yet whether a commit landed", topic=landing.topic)
            await asyncio.sleep(wait)
            wait = min(wait * 2, 5.0)

    async def _transaction(
        self,
        records: list[Outgoing],
        offsets: dict[TopicPartition, int],
        committing: list[Landing],
    ) -> None:
        """One transaction; ``committing`` gets its first record's place just before the
        commit is asked (from then on a failure leaves the outcome unknown)."""
        producer = self._producer
        assert producer is not None
        async with producer.transaction():
            deliveries: list[asyncio.Future[object]] = []
            for record in records:
                delivery = await producer.send(
                    record.topic,
                    record.value,
                    key=record.key,
                    headers=record.headers,
                    partition=record.partition,
                )
                # Read by gather below, or by this when a later send fails first (a fence).
                delivery.add_done_callback(_retrieved)
                deliveries.append(delivery)
            # A record the broker refused fails its own future only: wait for every
            # delivery, so such a transaction aborts instead of committing without it.
            acknowledged = await asyncio.gather(*deliveries)
            if offsets:
                await producer.send_offsets_to_transaction(offsets, self._settings.group_id)
            for first in acknowledged[:1]:
                committing.append(
                    Landing(
                        str(getattr(first, "topic", "")),
                        int(getattr(first, "partition", -1)),
                        int(getattr(first, "offset", -1)),
                    )
                )

    async def _replace_producer(self, backoff: float) -> None:
        """Swap in a started producer with the same transactional id (which aborts the old
        one's open transaction); waits, retrying, while the broker is away or the group has
        not confirmed that the partition is still ours. A producer that failed to start is
        never used."""
        old, self._producer = self._producer, None
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), timeout=5)
        while True:
            await asyncio.sleep(backoff)
            if not await self._owned():
                backoff = min(backoff * 2, 5.0)
                continue
            fresh = self._new_producer()
            try:
                async with asyncio.timeout(TRANSACTION_TIMEOUT_S):
                    await fresh.start()
            except (KafkaError, OSError, TimeoutError):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(fresh.stop(), timeout=5)
                backoff = min(backoff * 2, 5.0)
                continue
            self._producer = fresh
            return

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Close the producer (after :meth:`run` has stopped), within ``timeout_s``."""
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._producer.stop(), timeout=timeout_s)


class Publishers:
    """A :class:`Publisher` for each commands partition this instance owns.

    :meth:`open` starts a partition's producer, which fences its previous owner; a fenced
    producer's partition is put on :attr:`fenced` for the service to give up; :meth:`close`
    drops what a partition had not committed. ``owns`` asks the consumer group whether a
    partition is still ours (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        owns: Callable[[TP], Awaitable[bool]],
        producers: ProducerFactory = kafka_producer,
        landed: LandedCheck = landed,
    ) -> None:
        self._settings = settings
        self._owns = owns
        self._producers = producers
        self._landed = landed
        self._by_tp: dict[TP, Publisher] = {}
        self._scopes: dict[TP, anyio.CancelScope] = {}
        self._tasks: anyio.abc.TaskGroup | None = None
        self._ready = anyio.Event()
        self.fenced: asyncio.Queue[TP] = asyncio.Queue()

    def transactional_id(self, tp: TP) -> str:
        return f"{self._settings.group_id}-{tp.topic}-{tp.partition}"

    async def run(self) -> None:
        """Host each partition's publishing loop; runs until cancelled."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            self._ready.set()
            await anyio.sleep_forever()

    async def open(self, tps: Iterable[TP]) -> None:
        """Start the producers of ``tps`` (fencing their previous owners) and their loops."""
        await self._ready.wait()
        for tp in sorted(set(tps) - set(self._by_tp)):
            publisher = Publisher(
                self._settings,
                self.transactional_id(tp),
                owned=functools.partial(self._owns, tp),
                producers=self._producers,
                landed=self._landed,
            )
            await publisher.start()
            self._by_tp[tp] = publisher
            assert self._tasks is not None
            self._tasks.start_soon(self._serve, tp, publisher)

    async def _serve(self, tp: TP, publisher: Publisher) -> None:
        with anyio.CancelScope() as scope:
            self._scopes[tp] = scope
            try:
                await publisher.run()
            except PublisherFencedError as exc:
                log.warning(
                    "fenced: another instance owns the partition",
                    partition=tp.partition,
                    error=str(exc)[:300],
                )
                self.fenced.put_nowait(tp)

    async def close(self, tps: Iterable[TP]) -> int:
        """Stop the producers of ``tps``; returns the batches dropped uncommitted."""
        dropped = 0
        for tp in sorted(set(tps) & set(self._by_tp)):
            publisher = self._by_tp.pop(tp)
            scope = self._scopes.pop(tp, None)
            if scope is not None:
                scope.cancel()
            dropped += publisher.abandon()
            await publisher.stop()
        if dropped:
            log.warning("uncommitted batches dropped with their partitions", batches=dropped)
        return dropped

    def owned(self) -> set[TP]:
        return set(self._by_tp)

    def publish(
        self, via: TP, records: list[Outgoing], offsets: dict[TopicPartition, int] | None = None
    ) -> asyncio.Future[None]:
        """Queue records on ``via``'s producer; the future resolves once committed (and is
        cancelled when the partition is not, or no longer, ours)."""
        publisher = self._by_tp.get(via)
        if publisher is None:
            log.warning(
                "not published: the partition is not ours",
                partition=via.partition,
                records=len(records),
            )
            dropped: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            dropped.cancel()
            return dropped
        return publisher.publish(records, offsets)

    @property
    def pending(self) -> int:
        return sum(publisher.pending for publisher in self._by_tp.values())

    def pending_in(self, tps: Iterable[TP]) -> int:
        """Batches ``tps``' producers hold uncommitted."""
        return sum(self._by_tp[tp].pending for tp in set(tps) & set(self._by_tp))

    def behind(self) -> bool:
        return self.pending >= self._settings.max_unpublished

    @property
    def healthy(self) -> bool:
        return all(publisher.healthy for publisher in self._by_tp.values())

    @property
    def failing_since(self) -> float | None:
        since = [p.failing_since for p in self._by_tp.values() if p.failing_since is not None]
        return min(since) if since else None

    async def flush(self, tps: Iterable[TP] | None = None) -> None:
        """Wait until what ``tps``' producers (default: all) hold is committed."""
        chosen = (
            self._by_tp if tps is None else {tp: self._by_tp[tp] for tp in tps if tp in self._by_tp}
        )
        for publisher in list(chosen.values()):
            await publisher.flush()

    async def stop(self) -> None:
        await self.close(list(self._by_tp))
