"""The Kafka operations only the service needs (topic creation, waiting for the broker).

The typed helpers it shares with the client (records, committed readers, partition lookup)
live in :mod:`model_trainer_client.kafka`, re-exported here; every aiokafka client takes its
connection arguments from :func:`model_trainer_client.settings.client_kwargs`.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from model_trainer_client.kafka import (
    assign_whole_topic,
    committed_reader,
    partition_for_key,
    partitions,
    to_record,
    topic_partitions,
)
from model_trainer_client.settings import client_kwargs

from .records import Record
from .settings import Settings

__all__ = [
    "assign_whole_topic",
    "command_record",
    "committed_reader",
    "ensure_topics",
    "partition_for_key",
    "partitions",
    "to_record",
    "topic_partitions",
    "wait_for_broker",
]
log = structlog.get_logger(__name__)


def command_record(message: object) -> Record:
    """A consumed command as the job book's plain record."""
    got = to_record(message)
    return Record(got.topic, got.partition, got.offset, got.key, got.value, got.headers)


async def ensure_topics(settings: Settings) -> None:
    """Create the service's topics when missing; the state topic is compacted."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings.bootstrap_servers))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, settings.topic_partitions, settings.replication_factor, None, None)
            for name in (settings.commands_topic, settings.dead_letter_topic)
        ]
        # Kept long enough that a dashboard started later rebuilds every job of the window.
        retention = {"retention.ms": str(settings.events_retention_ms)}
        wanted.append(
            NewTopic(
                settings.events_topic,
                settings.topic_partitions,
                settings.replication_factor,
                None,
                retention,
            )
        )
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
        admin = AIOKafkaAdminClient(**client_kwargs(bootstrap_servers), request_timeout_ms=5000)
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
