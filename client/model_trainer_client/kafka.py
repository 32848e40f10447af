"""The few Kafka operations the client (and the service) need, typed, over aiokafka.

aiokafka ships no type information; this module is where its untyped values become ours.
Every client is built with :func:`~model_trainer_client.settings.client_kwargs`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import murmur2

from .settings import KafkaConnection, client_kwargs

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True)
class Record:
    """One consumed record, detached from aiokafka's types."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers
    timestamp_ms: int = -1

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


def to_record(message: object) -> Record:
    topic = getattr(message, "topic", "")
    partition = getattr(message, "partition", -1)
    offset = getattr(message, "offset", -1)
    key = getattr(message, "key", None)
    value = getattr(message, "value", None)
    timestamp = getattr(message, "timestamp", -1)
    raw_headers = getattr(message, "headers", ()) or ()
    headers: Headers = [
        (str(name), bytes(val or b"")) for name, val in raw_headers if isinstance(name, str)
    ]
    return Record(
        topic=str(topic),
        partition=int(partition),
        offset=int(offset),
        key=bytes(key) if isinstance(key, bytes | bytearray) else None,
        value=bytes(value) if isinstance(value, bytes | bytearray) else b"",
        headers=headers,
        timestamp_ms=int(timestamp) if isinstance(timestamp, int) else -1,
    )


def partitions(topic: str, ids: Iterable[int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for partition in ids]


def partition_for_key(key: bytes, partition_count: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record (the Java client's and
    aiokafka's alike): murmur2 of the key, made positive, modulo the partition count."""
    if partition_count < 1:
        raise ValueError(f"a topic has at least one partition, not {partition_count}")
    hashed = int(murmur2(key)) & 0x7FFFFFFF
    return hashed % partition_count


def committed_reader(connection: KafkaConnection | str) -> AIOKafkaConsumer:
    """A consumer outside any group that sees committed records only (transactions)."""
    return AIOKafkaConsumer(
        **client_kwargs(connection),
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )


async def assign_whole_topic(
    consumer: AIOKafkaConsumer,
    connection: KafkaConnection | str,
    topic: str,
    *,
    from_end: bool = False,
) -> list[TopicPartition]:
    """Assign every partition of ``topic`` to a started consumer, at its beginning or end.

    Returns the partitions; an empty list (and nothing assigned) when the topic is missing.
    """
    tps = partitions(topic, await topic_partitions(connection, topic))
    if not tps:
        return tps
    consumer.assign(tps)
    if from_end:
        await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve positions now, so nothing published later is missed
            await consumer.position(tp)
    else:
        await consumer.seek_to_beginning(*tps)
    return tps


async def topic_partitions(connection: KafkaConnection | str, topic: str) -> list[int]:
    """The partition ids of ``topic`` (empty when it does not exist).

    Asks for every topic's metadata: a metadata request naming a missing topic makes a broker
    with ``auto.create.topics.enable`` create it (one partition, default config), and a reader
    must never create the service's topics.
    """
    admin = AIOKafkaAdminClient(**client_kwargs(connection))
    await admin.start()
    try:
        described = await admin.describe_topics()
    finally:
        await admin.close()
    found: list[int] = []
    for entry in described:
        if isinstance(entry, dict) and entry.get("topic") == topic:
            for part in entry.get("partitions", []):
                if isinstance(part, dict) and isinstance(part.get("partition"), int):
                    found.append(part["partition"])
    return sorted(found)
