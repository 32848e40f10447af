"""The client's settings: where Kafka is, the topic names, and how to connect.

Read from the same environment variables as the service (``MODEL_TRAINER_*``), with the same
defaults, so one environment serves both. Every aiokafka client this package builds takes
its connection arguments from :func:`client_kwargs`: security (SASL/SSL) goes there, once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from model_trainer_contracts import COMMANDS_TOPIC, EVENTS_TOPIC

STATE_TOPIC = "trainer.jobs.state"
DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
ENV_PREFIX = "MODEL_TRAINER_"

# The arguments every aiokafka client (producer, consumer, admin) is built with.
KafkaKwargs = dict[str, object]


@dataclass(frozen=True)
class KafkaConnection:
    """How to reach the brokers. Security settings (``security_protocol``, SASL mechanism and
    credentials, an SSL context) become fields here and arguments in :func:`client_kwargs`."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP_SERVERS


def client_kwargs(connection: KafkaConnection | str) -> KafkaKwargs:
    """The arguments common to every aiokafka client: the one place that knows how to connect.

    A plain string is taken as bootstrap servers with the defaults for the rest.
    """
    conn = connection if isinstance(connection, KafkaConnection) else KafkaConnection(connection)
    return {"bootstrap_servers": conn.bootstrap_servers}


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


@dataclass(frozen=True)
class ClientSettings:
    """Connection and topic names, as the client uses them."""

    connection: KafkaConnection = field(default_factory=KafkaConnection)
    commands_topic: str = COMMANDS_TOPIC
    events_topic: str = EVENTS_TOPIC
    state_topic: str = STATE_TOPIC

    @property
    def bootstrap_servers(self) -> str:
        return self.connection.bootstrap_servers

    @classmethod
    def from_env(
        cls, bootstrap_servers: str | None = None, env: Mapping[str, str] | None = None
    ) -> ClientSettings:
        """Settings from ``env`` (default: the process environment); an explicit
        ``bootstrap_servers`` (the ``--bootstrap-servers`` option) wins over it."""
        env = os.environ if env is None else env
        servers = (
            bootstrap_servers
            or _first(env, f"{ENV_PREFIX}BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS")
            or DEFAULT_BOOTSTRAP_SERVERS
        )
        return cls(
            connection=KafkaConnection(bootstrap_servers=servers),
            commands_topic=_first(env, f"{ENV_PREFIX}COMMANDS_TOPIC") or COMMANDS_TOPIC,
            events_topic=_first(env, f"{ENV_PREFIX}EVENTS_TOPIC") or EVENTS_TOPIC,
            state_topic=_first(env, f"{ENV_PREFIX}STATE_TOPIC") or STATE_TOPIC,
        )
