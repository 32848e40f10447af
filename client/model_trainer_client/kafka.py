"""The few Kafka operations the client (and the service) need, typed, over aiokafka.

aiokafka ships no type information; this module is where its untyped values become ours.
Every client is built with :func:`~model_trainer_client.settings.client_kwargs`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.partitioner import murmur2
from model_trainer_contracts import Headers
from model_trainer_contracts.records import Record as Record

from .settings import KAFKA_ENV_PREFIX, KafkaConnection, as_connection, client_kwargs


def to_record(message: object) -> Record:
    """One consumed record, detached from aiokafka's types."""
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


class KafkaAccessError(Exception):
    """A broker answered but refused this client: retrying with the same settings cannot
    help. The message says what was refused and which setting to look at."""


class KafkaAuthenticationError(KafkaAccessError):
    """SASL: the broker refused the credentials, or does not offer the mechanism."""


class KafkaTLSError(KafkaAccessError):
    """TLS: the broker's certificate is not trusted (or not for its host name), or the
    handshake failed (e.g. a TLS client at a plaintext listener)."""


def bootstrap_hosts(bootstrap_servers: str) -> list[tuple[str, int]]:
    """The bootstrap servers as (host, port), in order, parsed as aiokafka parses them."""
    found: list[tuple[str, int]] = []
    for entry in collect_hosts(bootstrap_servers, randomize=False):
        host, port = entry[0], entry[1]
        if isinstance(host, str) and isinstance(port, int):
            found.append((host, port))
    return found


def _refused(conn: KafkaConnection, where: str, exc: BaseException) -> KafkaAccessError | None:
    """``exc``, raised while connecting to ``where``, as a refusal; None when it is not one
    (the broker is away or slow: that is worth retrying)."""
    if isinstance(exc, SaslAuthenticationFailed):
        return KafkaAuthenticationError(
            f"Kafka at {where} refused the SASL credentials of user {conn.sasl_username!r} "
            f"({conn.sasl_mechanism}): {exc}. Check {KAFKA_ENV_PREFIX}SASL_USERNAME, "
            f"{KAFKA_ENV_PREFIX}SASL_PASSWORD and {KAFKA_ENV_PREFIX}SASL_MECHANISM"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return KafkaAuthenticationError(
            f"Kafka at {where} does not offer SASL mechanism {conn.sasl_mechanism}: "
            f"set {KAFKA_ENV_PREFIX}SASL_MECHANISM to one its listener enables"
        )
    if isinstance(exc, IllegalSaslStateError):
        return KafkaAuthenticationError(
            f"Kafka at {where} refused the SASL handshake: its listener does not do SASL? "
            f"Check {KAFKA_ENV_PREFIX}SECURITY_PROTOCOL ({conn.security_protocol}) and the port"
        )
    if isinstance(exc, AuthenticationFailedError | AuthenticationMethodNotSupported):
        return KafkaAuthenticationError(f"Kafka at {where} refused to authenticate us: {exc!r}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        trusted = f"the CA in {conn.ssl_cafile}" if conn.ssl_cafile else "the system's CAs"
        return KafkaTLSError(
            f"the TLS certificate of Kafka at {where} is not trusted: {exc.verify_message} "
            f"(trusting {trusted}; hostname check {'on' if conn.ssl_check_hostname else 'off'})."
            f" Set {KAFKA_ENV_PREFIX}SSL_CAFILE to the CA that signed the broker's certificate"
        )
    if isinstance(exc, ssl.SSLError):
        return KafkaTLSError(
            f"the TLS handshake with Kafka at {where} failed: {exc.reason or exc}. Does the "
            f"listener speak TLS? Check {KAFKA_ENV_PREFIX}SECURITY_PROTOCOL and the port"
        )
    return None


def _unreachable(conn: KafkaConnection, where: str, exc: BaseException) -> str:
    """Why ``where`` could not be used this time, for people, with a hint where one helps."""
    why = f"{where}: {exc!s}" if str(exc) else f"{where}: {type(exc).__name__}"
    if isinstance(exc, KafkaConnectionError | ConnectionResetError):
        # What a listener does to a client speaking the wrong protocol (plaintext to TLS,
        # TLS to plaintext): it drops the connection.
        why += (
            " (the broker dropped the connection: does its listener speak "
            f"{conn.security_protocol}? Check {KAFKA_ENV_PREFIX}SECURITY_PROTOCOL and the port)"
        )
    return why


@dataclass(frozen=True)
class BrokerProbe:
    """What connecting to each bootstrap server found."""

    refused: KafkaAccessError | None
    unreachable: list[str]

    @property
    def problem(self) -> str | None:
        """Why no connection could be made, for people; None when one could."""
        if self.refused is not None:
            return str(self.refused)
        return "; ".join(self.unreachable) or None


async def probe_brokers(connection: KafkaConnection | str, timeout_s: float = 10.0) -> BrokerProbe:
    """Connect to each bootstrap server the way aiokafka does (TCP, the TLS handshake, SASL
    authentication) and say what refused us, if anything did. aiokafka's clients only say
    "Unable to bootstrap" for all of these, and log the cause.

    ``refused`` is the first refusal (wrong credentials, an untrusted certificate): retrying
    cannot help. ``unreachable`` lists the servers that could not be used for other reasons
    (not listening, dropped connection, timeout): those may come back.
    """
    conn = as_connection(connection)
    kwargs = client_kwargs(conn)
    del kwargs["bootstrap_servers"]
    per_host_ms = max(1000, int(timeout_s * 1000) // 2)
    unreachable: list[str] = []
    for host, port in bootstrap_hosts(conn.bootstrap_servers):
        where = f"{host}:{port}"
        try:
            async with asyncio.timeout(timeout_s):
                probe = await create_conn(host, port, request_timeout_ms=per_host_ms, **kwargs)
        except (OSError, KafkaError, TimeoutError) as exc:
            refused = _refused(conn, where, exc)
            if refused is not None:
                return BrokerProbe(refused, unreachable)
            unreachable.append(_unreachable(conn, where, exc))
            continue
        probe.close()
    return BrokerProbe(None, unreachable)
