"""The producer: events, state records and offset commits, published in Kafka transactions.

Everything the service writes goes through :class:`Publisher`. Writes are batched into one
transaction at a time, with the consumed offsets they settle, so a terminal event, its job
state and its command's offset commit land together or not at all. While the broker is away
batches wait in memory and are retried; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, ProducerFenced
from model_trainer_client.settings import client_kwargs

from .metrics import EVENTS_PUBLISHED, PUBLISH_RETRIES
from .records import Outgoing
from .settings import Settings

log = structlog.get_logger(__name__)
MAX_BATCH = 500
TRANSACTION_TIMEOUT_S = 30.0


class PublisherFencedError(RuntimeError):
    """Another process took this instance's transactional id: this one must stop."""


@dataclass
class _Item:
    records: list[Outgoing]
    offsets: dict[TopicPartition, int]
    done: asyncio.Future[None] = field(default_factory=asyncio.Future)


class Publisher:
    """A transactional, idempotent (acks=all) producer with an in-memory retry buffer."""

    def __init__(self, settings: Settings, transactional_id: str) -> None:
        self._settings = settings
        self._transactional_id = transactional_id
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._producer: AIOKafkaProducer | None = None
        self._inflight = 0
        self.healthy = False
        self.failing_since: float | None = None  # monotonic time of the first failed commit

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            **client_kwargs(self._settings.connection),
            transactional_id=self._transactional_id,
            transaction_timeout_ms=self._settings.transaction_timeout_ms,
            enable_idempotence=True,
            acks="all",
            linger_ms=5,
            max_request_size=4 * 1024 * 1024,
            request_timeout_ms=15_000,
        )

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
            try:
                # Bounded: a transaction whose commit waits on a broker that went away
                # would otherwise wait for ever; a fresh producer aborts it and retries.
                async with asyncio.timeout(TRANSACTION_TIMEOUT_S):
                    await self._transaction(records, offsets)
                if failures:
                    log.warning("publishing again", failed_attempts=failures)
                self.healthy, self.failing_since = True, None
                EVENTS_PUBLISHED.inc(len(records))
                return
            except ProducerFenced as exc:
                self.healthy = False
                raise PublisherFencedError(str(exc)) from exc
            except Exception as exc:  # any failure: the batch stays and is sent again
                self.healthy = False
                PUBLISH_RETRIES.inc()
                failures += 1
                if self.failing_since is None:
                    self.failing_since = asyncio.get_running_loop().time()
                if failures == 1:  # one line per outage, not one per attempt
                    log.warning("publish failed; retrying", error=repr(exc), records=len(records))
                await self._replace_producer(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _transaction(
        self, records: list[Outgoing], offsets: dict[TopicPartition, int]
    ) -> None:
        producer = self._producer
        assert producer is not None
        async with producer.transaction():
            deliveries: list[asyncio.Future[object]] = [
                await producer.send(
                    record.topic, record.value, key=record.key, headers=record.headers
                )
                for record in records
            ]
            # A record the broker refused fails its own future only: wait for every
            # delivery, so such a transaction aborts instead of committing without it.
            await asyncio.gather(*deliveries)
            if offsets:
                await producer.send_offsets_to_transaction(offsets, self._settings.group_id)

    async def _replace_producer(self, backoff: float) -> None:
        """Swap in a started producer with the same transactional id (which aborts the old
        one's open transaction); waits, retrying, while the broker is away. A producer that
        failed to start is never used."""
        old, self._producer = self._producer, None
        if old is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(old.stop(), timeout=5)
        while True:
            await asyncio.sleep(backoff)
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
