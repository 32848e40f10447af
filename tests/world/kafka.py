"""An in-memory Kafka with the semantics the shell relies on, behind the shell's ports.

It generalises the two-book world (``tests/runtime/test_book_world.py``) from books to the
whole shell: :meth:`Kafka.edges` hands a :class:`~model_trainer.shell.service.TrainerService`
this world's consumer, publishers (the service's real :class:`Publishers`, on this world's
producers), state reader, log shipper and broker, so the shell runs in-process, in seconds.

What it promises, as Kafka does:

- A topic has partitions; a partition is a log of records with offsets 0, 1, 2... A keyed
  record without a partition goes to ``partition_for_key`` (the service's partitioner).
- A transactional producer belongs to a ``transactional.id``; starting one bumps the id's
  epoch and aborts the id's open transaction. A producer of an older epoch is fenced: its
  every later send, offset commit or commit raises ``ProducerFenced``.
- A transaction's records and consumer offsets commit together or not at all. Its records
  take their offsets when sent; until the transaction ends they hold the partition's last
  stable offset (LSO) below them, and aborted ones are never read.
- Readers are read_committed: they see committed records below the LSO, in offset order.
- A consumer group gives each subscribed partition to one member, round-robin in join
  order. A join or a leave starts a rebalance (eager, as aiokafka's): every member's
  ``on_revoked`` runs (with its whole assignment) before any member's ``on_assigned``, each
  in that member's own ``getmany``, as aiokafka runs them while a poll waits. Positions start
  at the group's committed offset (earliest when none). A member owns a partition while it is
  assigned it in the current generation and the broker answers. An evicted member (its
  session timed out while its process was paused) is not told: it reads on, a zombie.
- While the broker is away (:attr:`Kafka.available` false) every producer call, the
  topics probe and the ownership check fail with ``KafkaConnectionError``; polls return
  nothing; nothing commits. A transaction left open then is aborted by the next producer of
  its id, as a real coordinator does.

Not modelled (the shell does not rely on them): replication, retention and compaction
(readers see every committed state record, which compaction only thins), timestamp lookups
(``published_seqs`` reads the whole events partition), a commit whose answer is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import partial

import anyio
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, ProducerFenced
from model_trainer.book.records import TP, Record
from model_trainer.pool.protocol import JobLog
from model_trainer.settings import Settings
from model_trainer.shell.consumer import CommandConsumer, Rebalance
from model_trainer.shell.ports import Edges, OnProblem, Owns, PoolPort
from model_trainer.shell.publisher import Landing, Publishers, TransactionalProducer
from model_trainer_client.kafka import partition_for_key
from model_trainer_contracts import Headers, JobStateV1
from pydantic import ValidationError

POLL_S = 0.01


class Outcome(Enum):
    OPEN = "open"
    COMMITTED = "committed"
    ABORTED = "aborted"


@dataclass
class _Transaction:
    transactional_id: str
    epoch: int
    outcome: Outcome = Outcome.OPEN
    offsets: dict[str, dict[TP, int]] = field(default_factory=dict)  # group → next offsets


@dataclass(frozen=True)
class _Entry:
    record: Record
    transaction: _Transaction | None  # None: written outside a transaction, committed

    @property
    def committed(self) -> bool:
        return self.transaction is None or self.transaction.outcome is Outcome.COMMITTED

    @property
    def open(self) -> bool:
        return self.transaction is not None and self.transaction.outcome is Outcome.OPEN


@dataclass(frozen=True)
class Delivered:
    """Where a sent record went (aiokafka's RecordMetadata, as the publisher reads it)."""

    topic: str
    partition: int
    offset: int


class Kafka:
    """One broker's worth of topics, transactions and consumer groups (see the module)."""

    def __init__(self) -> None:
        self.logs: dict[str, list[list[_Entry]]] = {}
        self.epochs: dict[str, int] = {}
        self.open: dict[str, _Transaction] = {}  # transactional.id → its open transaction
        self.offsets: dict[str, dict[TP, int]] = {}  # group → committed offsets
        self.groups: dict[str, _Group] = {}
        self.available = True
        self.transactions: dict[str, int] = {}  # committed, per transactional.id

    # -- the broker

    def answer(self) -> None:
        if not self.available:
            raise KafkaConnectionError("the world's broker is away")

    def create_topic(self, topic: str, partitions: int) -> None:
        self.logs.setdefault(topic, [[] for _ in range(partitions)])

    def partition_count(self, topic: str) -> int:
        return len(self.logs.get(topic, []))

    def append(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int | None = None,
        headers: Headers | None = None,
        transaction: _Transaction | None = None,
    ) -> Delivered:
        log = self.logs[topic]
        if partition is None:
            partition = partition_for_key(key or b"", len(log))
        offset = len(log[partition])
        record = Record(topic, partition, offset, key, value or b"", list(headers or []))
        log[partition].append(_Entry(record, transaction))
        return Delivered(topic, partition, offset)

    def stable_end(self, tp: TP) -> int:
        """The LSO: below the first record of a transaction still open."""
        entries = self.logs[tp.topic][tp.partition]
        return next((e.record.offset for e in entries if e.open), len(entries))

    def committed(self, tp: TP, start: int = 0) -> list[Record]:
        """What a read_committed reader reads of ``tp`` from ``start``."""
        entries = self.logs[tp.topic][tp.partition][start : self.stable_end(tp)]
        return [entry.record for entry in entries if entry.committed]

    def read(self, topic: str) -> list[Record]:
        """Every committed record of ``topic``, partition by partition."""
        return [
            record
            for partition in range(self.partition_count(topic))
            for record in self.committed(TP(topic, partition))
        ]

    # -- transactions

    def init_producer(self, transactional_id: str) -> int:
        """A new producer of the id: the epoch goes up, the open transaction aborts."""
        self.answer()
        self.epochs[transactional_id] = epoch = self.epochs.get(transactional_id, 0) + 1
        stale = self.open.pop(transactional_id, None)
        if stale is not None:
            stale.outcome = Outcome.ABORTED
        return epoch

    def begin(self, transactional_id: str, epoch: int) -> _Transaction:
        self.check_epoch(transactional_id, epoch)
        transaction = _Transaction(transactional_id, epoch)
        self.open[transactional_id] = transaction
        return transaction

    def check_epoch(self, transactional_id: str, epoch: int) -> None:
        self.answer()
        if self.epochs.get(transactional_id, 0) != epoch:
            raise ProducerFenced()

    def end(self, transaction: _Transaction, commit: bool) -> None:
        self.check_epoch(transaction.transactional_id, transaction.epoch)
        if transaction.outcome is not Outcome.OPEN:
            raise ProducerFenced()  # aborted by a newer producer of the id
        del self.open[transaction.transactional_id]
        transaction.outcome = Outcome.COMMITTED if commit else Outcome.ABORTED
        if commit:
            tid = transaction.transactional_id
            self.transactions[tid] = self.transactions.get(tid, 0) + 1
            for group, offsets in transaction.offsets.items():
                self.offsets.setdefault(group, {}).update(offsets)

    # -- the shell's edges

    def edges(self, pool: Callable[[Settings], PoolPort]) -> Edges:
        return Edges(
            consumers=self.consumer,
            publishers=self.publishers,
            state=partial(WorldState, self),
            pool=pool,
            logs=partial(WorldLogs, self),
            wait_for_broker=self.wait_for_broker,
            ensure_topics=self.ensure_topics,
        )

    def consumer(self, settings: Settings, rebalance: Rebalance) -> CommandConsumer:
        group = self.groups.setdefault(settings.group_id, _Group())
        return WorldConsumer(self, group, settings, rebalance)

    def publishers(self, settings: Settings, owns: Owns) -> Publishers:
        return Publishers(settings, owns, producers=self.producer, landed=self.landed)

    def producer(self, _settings: Settings, transactional_id: str) -> TransactionalProducer:
        return WorldProducer(self, transactional_id)

    async def landed(self, _settings: Settings, landing: Landing, _timeout_s: float) -> bool | None:
        """Whether the record at ``landing`` is committed (None while its transaction is
        open or the broker is away), as :func:`~model_trainer.shell.publisher.landed`."""
        if not self.available:
            return None
        entries = self.logs[landing.topic][landing.partition]
        if landing.offset >= len(entries) or entries[landing.offset].open:
            return None
        return entries[landing.offset].committed

    async def wait_for_broker(self, _settings: Settings, on_problem: OnProblem) -> None:
        while not self.available:
            on_problem("the world's broker is away")
            await anyio.sleep(POLL_S)
        on_problem(None)

    async def ensure_topics(self, settings: Settings) -> None:
        self.answer()
        for topic in (
            *settings.tenancy.topics(),
            settings.dead_letter_topic,
            settings.events_topic,
            settings.logs_topic,
            settings.state_topic,
        ):
            self.create_topic(topic, settings.topic_partitions)


class WorldProducer:
    """A transactional producer of the world (:class:`TransactionalProducer`)."""

    def __init__(self, kafka: Kafka, transactional_id: str) -> None:
        self._kafka = kafka
        self._id = transactional_id
        self._epoch = -1
        self._transaction: _Transaction | None = None

    async def start(self) -> None:
        self._epoch = self._kafka.init_producer(self._id)

    async def stop(self) -> None:
        pass  # an open transaction stays open: the id's next producer aborts it

    @contextlib.asynccontextmanager
    async def _transaction_scope(self) -> AsyncIterator[object]:
        self._transaction = self._kafka.begin(self._id, self._epoch)
        try:
            yield self._transaction
        except BaseException:
            with contextlib.suppress(KafkaConnectionError, ProducerFenced):
                self._kafka.end(self._transaction, commit=False)
            raise
        else:
            self._kafka.end(self._transaction, commit=True)
        finally:
            self._transaction = None

    def transaction(self) -> contextlib.AbstractAsyncContextManager[object]:
        return self._transaction_scope()

    def _open(self) -> _Transaction:
        transaction = self._transaction
        assert transaction is not None, "send outside a transaction"
        self._kafka.check_epoch(self._id, self._epoch)
        if transaction.outcome is not Outcome.OPEN:
            raise ProducerFenced()
        return transaction

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
        headers: Headers | None = None,
    ) -> asyncio.Future[object]:
        transaction = self._open()
        delivered = self._kafka.append(topic, value, key, partition, headers, transaction)
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.set_result(delivered)
        return future

    async def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, int], group_id: str
    ) -> None:
        transaction = self._open()
        mine = transaction.offsets.setdefault(group_id, {})
        for tp, offset in offsets.items():
            mine[TP(tp.topic, tp.partition)] = offset


@dataclass
class _Group:
    members: list[WorldConsumer] = field(default_factory=list)
    generation: int = 0
    revoked: dict[int, int] = field(default_factory=dict)  # id(member) → generation revoked in

    def change(self) -> None:
        self.generation += 1

    def assignment(self, member: WorldConsumer) -> set[TP]:
        tps = sorted(
            TP(topic, partition)
            for topic in member.subscribed
            for partition in range(member.kafka.partition_count(topic))
        )
        index = self.members.index(member)
        return set(tps[index :: len(self.members)])


class WorldConsumer:
    """A member of a consumer group, read_committed (:class:`CommandConsumer`)."""

    def __init__(
        self, kafka: Kafka, group: _Group, settings: Settings, rebalance: Rebalance
    ) -> None:
        self.kafka = kafka
        self._group = group
        self._group_id = settings.group_id
        self._rebalance = rebalance
        self.subscribed = settings.tenancy.topics()
        self._generation = 0
        self._assigned: set[TP] = set()
        self._paused: set[TP] = set()
        self._position: dict[TP, int] = {}
        self.evicted = False

    async def start(self) -> None:
        self.kafka.answer()
        self._group.members.append(self)
        self._group.change()

    async def stop(self) -> None:
        if self in self._group.members:
            self._group.members.remove(self)
            self._group.revoked.pop(id(self), None)
            self._group.change()
        self._assigned = set()

    def evict(self) -> None:
        """The group drops this member as if its session had timed out (its process paused):
        it is not told, and goes on reading what it was assigned, a zombie."""
        self.evicted = True
        self._group.members.remove(self)
        self._group.revoked.pop(id(self), None)
        self._group.change()

    async def _rebalanced(self) -> None:
        """Revoke everything, wait for every member to have done so, take the new share."""
        group = self._group
        if self.evicted:
            return
        while self._generation != group.generation:
            generation = group.generation
            if group.revoked.get(id(self)) != generation:
                revoked, self._assigned = self._assigned, set()
                await self._rebalance.on_revoked(revoked)
                group.revoked[id(self)] = generation
            if any(group.revoked.get(id(m)) != group.generation for m in group.members):
                await anyio.sleep(POLL_S)
                continue
            if generation != group.generation:
                continue
            self._generation = generation
            self._assigned = group.assignment(self)
            committed = self.kafka.offsets.get(self._group_id, {})
            self._position = {tp: committed.get(tp, 0) for tp in self._assigned}
            self._paused &= self._assigned
            await self._rebalance.on_assigned(set(self._assigned))

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TP, list[object]]:
        deadline = anyio.current_time() + timeout_ms / 1000
        while True:
            await self._rebalanced()
            batches: dict[TP, list[object]] = {}
            room = max_records
            if self.kafka.available:
                for tp in sorted(self._assigned - self._paused):
                    records = self.kafka.committed(tp, self._position[tp])[:room]
                    if records:
                        batches[tp] = [*records]
                        self._position[tp] = records[-1].offset + 1
                        room -= len(records)
            if batches or anyio.current_time() >= deadline:
                return batches
            await anyio.sleep(POLL_S)

    def assignment(self) -> set[TP]:
        return set(self._assigned)

    def pause(self, *tps: TP) -> None:
        self._paused |= set(tps)

    def resume(self, *tps: TP) -> None:
        self._paused -= set(tps)

    async def topics(self) -> set[str]:
        self.kafka.answer()
        return set(self.kafka.logs)

    async def owns(self, tp: TP) -> bool:
        return (
            self.kafka.available
            and tp in self._assigned
            and self._generation == self._group.generation
        )

    async def committed(self, tps: set[TP]) -> dict[TP, int]:
        self.kafka.answer()
        offsets = self.kafka.offsets.get(self._group_id, {})
        return {tp: offsets[tp] for tp in tps if tp in offsets}

    def partition_count(self, topic: str) -> int:
        return self.kafka.partition_count(topic)

    async def rewind(self, tp: TP) -> None:
        self._position[tp] = self.kafka.offsets.get(self._group_id, {}).get(tp, 0)


class WorldState:
    """The state topic read back, read_committed (:class:`~.ports.StateReaderPort`)."""

    def __init__(
        self,
        kafka: Kafka,
        settings: Settings,
        on_state: Callable[[JobStateV1], None],
        on_tombstone: Callable[[str], None],
    ) -> None:
        self._kafka = kafka
        self._settings = settings
        self._on_state = on_state
        self._on_tombstone = on_tombstone
        self._read: dict[TP, int] = {}

    async def start(self) -> float:
        topic = self._settings.state_topic
        if not self._kafka.partition_count(topic):
            raise RuntimeError(f"state topic {topic!r} does not exist")
        self._read = {TP(topic, p): 0 for p in range(self._kafka.partition_count(topic))}
        await self.catch_up()
        return 0.0

    async def catch_up(self) -> None:
        for tp, at in self._read.items():
            for record in self._kafka.committed(tp, at):
                self._read[tp] = record.offset + 1
                self._hand_on(record)
            self._read[tp] = max(self._read[tp], self._kafka.stable_end(tp))

    def _hand_on(self, record: Record) -> None:
        if not record.value:
            if record.key:
                self._on_tombstone(record.key.decode(errors="replace"))
            return
        with contextlib.suppress(ValidationError):
            self._on_state(JobStateV1.model_validate_json(record.value))

    async def follow(self) -> None:
        while True:
            if self._kafka.available:
                await self.catch_up()
            await anyio.sleep(POLL_S * 5)

    async def published_seqs(self, since: Mapping[str, float]) -> dict[str, int]:
        self._kafka.answer()
        seqs: dict[str, int] = {}
        for record in self._kafka.read(self._settings.events_topic):
            job_id = (record.key or b"").decode(errors="replace")
            if job_id in since:
                seq = json.loads(record.value).get("seq")
                if isinstance(seq, int) and seq > seqs.get(job_id, -1):
                    seqs[job_id] = seq
        return seqs

    async def stop(self) -> None:
        pass


class WorldLogs:
    """Job log lines onto the world's logs topic, best-effort (:class:`~.ports.LogsPort`)."""

    def __init__(self, kafka: Kafka, settings: Settings) -> None:
        self._kafka = kafka
        self._topic = settings.logs_topic
        self._buffer: list[JobLog] = []

    def add(self, line: JobLog) -> None:
        self._buffer.append(line)

    def _ship(self) -> None:
        if self._kafka.available and self._kafka.partition_count(self._topic):
            lines, self._buffer = self._buffer, []
            for line in lines:
                self._kafka.append(self._topic, line.data, line.job_id.encode())

    async def run(self) -> None:
        while True:
            self._ship()
            await anyio.sleep(POLL_S * 10)

    async def stop(self, timeout_s: float = 2.0) -> None:
        self._ship()
