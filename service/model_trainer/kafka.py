"""The few Kafka operations the service needs, typed, over aiokafka.

aiokafka ships no type information; this module is where its untyped values become ours.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from .records import Headers, Record
from .settings import Settings

log = structlog.get_logger(__name__)


def to_record(message: object) -> Record:
    topic = getattr(message, "topic", "")
    partition = getattr(message, "partition", -1)
    offset = getattr(message, "offset", -1)
    key = getattr(message, "key", None)
    value = getattr(message, "value", None)
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
    )


async def ensure_topics(settings: Settings) -> None:
    """Create the service's topics when missing; the state topic is compacted."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, settings.topic_partitions, settings.replication_factor, None, None)
            for name in (settings.commands_topic, settings.events_topic, settings.dead_letter_topic)
        ]
        wanted.append(
            NewTopic(
                settings.state_topic,
                settings.topic_partitions,
                settings.replication_factor,
                None,
                {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"},
            )
        )
        missing = [topic for topic in wanted if topic.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another instance won the race
                await admin.create_topics(missing)
            log.info("topics created", topics=[topic.name for topic in missing])
    finally:
        await admin.close()


async def wait_for_broker(bootstrap_servers: str, timeout_s: float) -> None:
    """Return once the broker answers metadata requests; raise TimeoutError after timeout_s."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no Kafka broker answered at {bootstrap_servers}") from exc
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


def partitions(topic: str, ids: Iterable[int]) -> list[TopicPartition]:
    return [TopicPartition(topic, partition) for partition in ids]


def committed_reader(bootstrap_servers: str) -> AIOKafkaConsumer:
    """A consumer outside any group that sees committed records only (transactions)."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )


async def assign_whole_topic(
    consumer: AIOKafkaConsumer, bootstrap_servers: str, topic: str, *, from_end: bool = False
) -> list[TopicPartition]:
    """Assign every partition of ``topic`` to a started consumer, at its beginning or end.

    Returns the partitions; an empty list (and nothing assigned) when the topic is missing.
    """
    tps = partitions(topic, await topic_partitions(bootstrap_servers, topic))
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


async def topic_partitions(bootstrap_servers: str, topic: str) -> list[int]:
    """The partition ids of ``topic`` (empty when it does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    found: list[int] = []
    for entry in described:
        if isinstance(entry, dict) and entry.get("topic") == topic:
            for part in entry.get("partitions", []):
                if isinstance(part, dict) and isinstance(part.get("partition"), int):
                    found.append(part["partition"])
    return sorted(found)
