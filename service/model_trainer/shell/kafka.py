"""The Kafka operations only the service needs (topic creation, waiting for the broker).

The typed helpers it shares with the client (records, committed readers, partition lookup,
the connection probe) live in :mod:`model_trainer_client.kafka`, imported from there by
every module that uses them; every aiokafka client takes its connection arguments from
:func:`model_trainer_client.settings.client_kwargs`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from model_trainer_client.kafka import probe_brokers, to_record, topic_partitions
from model_trainer_client.settings import KafkaConnection, as_connection, client_kwargs

from model_trainer.book.records import Record
from model_trainer.settings import Settings

__all__ = ["BrokerUnreachableError", "command_record", "ensure_topics", "wait_for_broker"]
log = structlog.get_logger(__name__)
TOPICS_LISTED_S = 30.0  # a created topic shows in the metadata within this, or start-up fails


class BrokerUnreachableError(TimeoutError):
    """No broker answered within the wait; the message says what the last attempt found."""


def command_record(message: object) -> Record:
    """A consumed command as the job book's plain record."""
    return to_record(message)


async def ensure_topics(settings: Settings) -> None:
    """Create the service's topics when missing; the state topic is compacted."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings.connection))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        # A job's submit must outlive the job: its record is what a new owner resumes from.
        commands = {"retention.ms": str(settings.commands_retention_ms)}
        wanted = [
            *(
                NewTopic(
                    topic, settings.topic_partitions, settings.replication_factor, None, commands
                )
                for topic in settings.tenancy.topics()  # the default one and each tenant's
            ),
            NewTopic(
                settings.dead_letter_topic,
                settings.topic_partitions,
                settings.replication_factor,
                None,
                None,
            ),
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
        # Best-effort and bulkier than events: their own, shorter retention.
        logs = {"retention.ms": str(settings.logs_retention_ms)}
        wanted.append(
            NewTopic(
                settings.logs_topic,
                settings.topic_partitions,
                settings.replication_factor,
                None,
                logs,
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
    await _listed([topic.name for topic in missing], settings.connection)


async def _listed(topics: list[str], connection: KafkaConnection) -> None:
    """Return once the broker's metadata lists every one of ``topics``. The controller
    accepts a creation before the brokers' metadata has it: a reader asking in between (the
    state reader, right after) finds no topic."""
    try:
        async with asyncio.timeout(TOPICS_LISTED_S):
            for topic in topics:
                while True:
                    if await topic_partitions(connection, topic):
                        break
                    await asyncio.sleep(0.1)  # a metadata request a poll: nothing to wait on
    except TimeoutError:
        raise RuntimeError(
            f"topics {topics} were created, but the broker's metadata did not list them "
            f"within {TOPICS_LISTED_S:g} s"
        ) from None


async def wait_for_broker(
    connection: KafkaConnection | str,
    timeout_s: float,
    on_problem: Callable[[str | None], None] | None = None,
) -> None:
    """Return once the broker answers metadata requests.

    Raises :class:`KafkaAccessError` (:class:`KafkaAuthenticationError`,
    :class:`KafkaTLSError`) at once when a broker refuses the credentials or the TLS
    handshake, :class:`KafkaConfigError` when a TLS file cannot be read, and
    :class:`BrokerUnreachableError` (a TimeoutError) when no broker answered within
    ``timeout_s``. ``on_problem`` hears why the broker cannot
    be used yet after each failed attempt, and None once it answered.
    """
    conn = as_connection(connection)
    kwargs = client_kwargs(conn)  # a CA or key that cannot be read fails here, not later
    report = on_problem or (lambda _why: None)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    said = None
    while True:
        admin = AIOKafkaAdminClient(**kwargs, request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.list_topics()
            report(None)
            return
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            # aiokafka says "Unable to bootstrap" whatever happened: ask the brokers why.
            probe = await probe_brokers(conn, timeout_s=5)
            why = probe.problem or f"{conn.bootstrap_servers}: {exc!r}"
            report(why)
            if probe.refused is not None:
                raise probe.refused from None
            if loop.time() > deadline:
                raise BrokerUnreachableError(
                    f"no Kafka broker answered at {conn.describe()} within {timeout_s:g} s: {why}"
                ) from exc
            if why != said:
                log.info("waiting for the Kafka broker", reason=why)
                said = why
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
