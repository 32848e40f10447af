"""The commands consumer: how it is built, and the probes the service runs against it.

The service takes a :data:`ConsumerFactory` (one of its :class:`~.ports.Edges`), so a test can
hand it another consumer (the in-memory world of ``tests/world``); the default builds
aiokafka's, tuned so a member stays in its group while jobs run for hours (see the README's
"Consumer settings").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from model_trainer_client.settings import client_kwargs

from model_trainer.book.records import TP
from model_trainer.metrics import CONSUMER_LAG
from model_trainer.settings import Settings


class CommandConsumer(Protocol):
    """What the service uses of a Kafka consumer."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TP, list[object]]: ...
    def assignment(self) -> set[TP]: ...
    def pause(self, *tps: TP) -> None: ...
    def resume(self, *tps: TP) -> None: ...
    async def topics(self) -> set[str]: ...
    async def owns(self, tp: TP) -> bool: ...
    async def committed(self, tps: set[TP]) -> dict[TP, int]: ...
    def partition_count(self, topic: str) -> int: ...
    async def rewind(self, tp: TP) -> None: ...


class Rebalance(Protocol):
    """Who hears of partitions changing hands (the service)."""

    async def on_revoked(self, tps: set[TP]) -> None: ...
    async def on_assigned(self, tps: set[TP]) -> None: ...


ConsumerFactory = Callable[[Settings, Rebalance], CommandConsumer]
log = structlog.get_logger(__name__)
OWNERSHIP_CHECK_S = 10.0


class _Listener:
    """Forwards aiokafka's rebalance callbacks, as our own partition type."""

    def __init__(self, target: Rebalance) -> None:
        self._target = target

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._target.on_revoked({TP(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._target.on_assigned({TP(tp.topic, tp.partition) for tp in assigned})


ConsumerRebalanceListener.register(_Listener)


class _KafkaCommands:
    """aiokafka's consumer behind :class:`CommandConsumer`: our partition type in and out."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self.kafka = consumer

    async def start(self) -> None:
        await self.kafka.start()

    async def stop(self) -> None:
        await self.kafka.stop()

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[TP, list[object]]:
        batches = await self.kafka.getmany(timeout_ms=timeout_ms, max_records=max_records)
        return {TP(tp.topic, tp.partition): list(records) for tp, records in batches.items()}

    def assignment(self) -> set[TP]:
        return {TP(tp.topic, tp.partition) for tp in self.kafka.assignment()}

    def pause(self, *tps: TP) -> None:
        self.kafka.pause(*(TopicPartition(*tp) for tp in tps))

    def resume(self, *tps: TP) -> None:
        self.kafka.resume(*(TopicPartition(*tp) for tp in tps))

    async def topics(self) -> set[str]:
        return set(await self.kafka.topics())

    async def owns(self, tp: TP) -> bool:
        """Whether the group still gives ``tp`` to this member: an offset commit carries the
        member's generation, and the broker refuses it once the member was evicted or a
        rebalance began. The committed offset is committed again, unchanged."""
        partition = TopicPartition(*tp)
        if partition not in self.kafka.assignment():
            return False
        try:
            async with asyncio.timeout(OWNERSHIP_CHECK_S):
                at = await self.kafka.committed(partition)
                if at is None:
                    at = (await self.kafka.beginning_offsets([partition]))[partition]
                await self.kafka.commit({partition: at})
        except Exception as exc:  # any failure: not confirmed now
            log.info("partition ownership not confirmed", partition=tp.partition, error=repr(exc))
            return False
        return True

    async def committed(self, tps: set[TP]) -> dict[TP, int]:
        found: dict[TP, int] = {}
        for tp in tps:
            at = await self.kafka.committed(TopicPartition(*tp))
            if isinstance(at, int):
                found[tp] = at
        return found

    def partition_count(self, topic: str) -> int:
        partitions = self.kafka.partitions_for_topic(topic)
        return len(partitions) if partitions else 0

    async def rewind(self, tp: TP) -> None:
        """Read ``tp`` again from its committed offset (what this instance skipped while it
        did not know whether the partition was still its own)."""
        await self.kafka.seek_to_committed(TopicPartition(*tp))


def kafka_consumer(settings: Settings, rebalance: Rebalance) -> CommandConsumer:
    """aiokafka's consumer of the commands topic, subscribed, not yet started."""
    raw = AIOKafkaConsumer(
        **client_kwargs(settings.connection),
        group_id=settings.group_id,
        group_instance_id=settings.instance_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        rebalance_timeout_ms=settings.rebalance_timeout_ms,
        max_partition_fetch_bytes=max(1 << 20, settings.max_command_bytes + 4096),
    )
    raw.subscribe(settings.tenancy.topics(), listener=_Listener(rebalance))
    return _KafkaCommands(raw)


class BrokerWatch:
    """Whether the broker answers, checked now and then: one log line when it goes away,
    one when it is back (with how long it was away)."""

    def __init__(self) -> None:
        self.reachable = True
        self._away_since = 0.0

    async def check(self, consumer: CommandConsumer, now: float) -> None:
        try:
            async with asyncio.timeout(3):
                await consumer.topics()
            reachable = True
        except Exception:  # any failure means "not reachable now"
            reachable = False
        if reachable and not self.reachable:
            log.warning("broker reachable again", outage_s=round(now - self._away_since, 1))
        elif not reachable and self.reachable:
            self._away_since = now
            log.warning("broker unreachable")
        self.reachable = reachable


async def record_lag(consumer: CommandConsumer) -> None:
    """Set the lag gauge per partition (aiokafka's consumer only; others are skipped)."""
    if not isinstance(consumer, _KafkaCommands):
        return
    highwater: Callable[[TopicPartition], object] = consumer.kafka.highwater
    position: Callable[[TopicPartition], Awaitable[object]] = consumer.kafka.position
    for tp in consumer.kafka.assignment():
        with contextlib.suppress(Exception):
            end, at = highwater(tp), await position(tp)
            if isinstance(end, int) and isinstance(at, int):
                CONSUMER_LAG.labels(partition=str(tp.partition)).set(end - at)
