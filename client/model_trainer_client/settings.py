"""The client's settings: where Kafka is, the topic names, and how to connect.

Read from the same environment variables as the service (``MODEL_TRAINER_*``), with the same
defaults, so one environment serves both. Every aiokafka client this package (and the
service) builds takes its connection arguments from :func:`client_kwargs`: the security
protocol, SASL credentials and the TLS context are set there, once.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from model_trainer_contracts import COMMANDS_TOPIC, EVENTS_TOPIC, LOGS_TOPIC
from pydantic import SecretStr

STATE_TOPIC = "trainer.jobs.state"
DEFAULT_BOOTSTRAP_SERVERS = "127.0.0.1:9092"
ENV_PREFIX = "MODEL_TRAINER_"
# The Kafka security settings' variables are ``MODEL_TRAINER_KAFKA_<FIELD>``, the service's
# alike (its fields are ``kafka_<field>``).
KAFKA_ENV_PREFIX = f"{ENV_PREFIX}KAFKA_"

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
SECURITY_PROTOCOLS: tuple[SecurityProtocol, ...] = (
    "PLAINTEXT",
    "SSL",
    "SASL_PLAINTEXT",
    "SASL_SSL",
)
SASL_MECHANISMS: tuple[SaslMechanism, ...] = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# The arguments every aiokafka client (producer, consumer, admin) is built with.
KafkaKwargs = dict[str, object]


class KafkaConfigError(ValueError):
    """The connection settings contradict each other, or a file they name cannot be used.

    The message names the variables to fix; it never contains the password.
    """


def security_protocol(value: str) -> SecurityProtocol:
    """``value`` as a security protocol (any case)."""
    for protocol in SECURITY_PROTOCOLS:
        if value.strip().upper() == protocol:
            return protocol
    raise KafkaConfigError(
        f"unknown Kafka security protocol {value!r}: one of {', '.join(SECURITY_PROTOCOLS)}"
    )


def sasl_mechanism(value: str) -> SaslMechanism:
    """``value`` as a SASL mechanism (any case)."""
    for mechanism in SASL_MECHANISMS:
        if value.strip().upper() == mechanism:
            return mechanism
    raise KafkaConfigError(f"unknown SASL mechanism {value!r}: one of {', '.join(SASL_MECHANISMS)}")


@dataclass(frozen=True)
class KafkaConnection:
    """How to reach the brokers and prove who we are: the one description of a connection
    that the service, the CLI and the benches share.

    The password is a :class:`~pydantic.SecretStr`: it shows as ``**********`` in reprs and
    logs, and only :func:`client_kwargs` reads its value.
    """

    bootstrap_servers: str = DEFAULT_BOOTSTRAP_SERVERS
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # TLS: the CA that signed the brokers' certificates (default: the system's CAs), and the
    # client's own certificate and key for mutual TLS.
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        # Checked at run time too: the values come from the environment and the command line.
        security_protocol(self.security_protocol)
        sasl_mechanism(self.sasl_mechanism)
        protocol = self.security_protocol
        has_password = bool(self.sasl_password and self.sasl_password.get_secret_value())
        if self.uses_sasl and not (self.sasl_username and has_password):
            raise KafkaConfigError(
                f"security protocol {protocol} needs a SASL user name and password: set "
                f"{KAFKA_ENV_PREFIX}SASL_USERNAME and {KAFKA_ENV_PREFIX}SASL_PASSWORD"
            )
        if not self.uses_sasl and (self.sasl_username or has_password):
            raise KafkaConfigError(
                f"a SASL user name or password is set but the security protocol is {protocol}: "
                f"set {KAFKA_ENV_PREFIX}SECURITY_PROTOCOL to SASL_SSL or SASL_PLAINTEXT"
            )
        files = [self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile]
        if not self.uses_tls and any(path is not None for path in files):
            raise KafkaConfigError(
                f"TLS files are set but the security protocol is {protocol}: "
                f"set {KAFKA_ENV_PREFIX}SECURITY_PROTOCOL to SSL or SASL_SSL"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise KafkaConfigError(
                f"{KAFKA_ENV_PREFIX}SSL_KEYFILE is set without {KAFKA_ENV_PREFIX}SSL_CERTFILE: "
                "a client key needs its certificate"
            )

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def describe(self) -> str:
        """Where and how it connects, for messages (no secret in it)."""
        how: str = self.security_protocol
        if self.uses_sasl:
            how += f", {self.sasl_mechanism} as {self.sasl_username}"
        if self.ssl_cafile is not None:
            how += f", CA {self.ssl_cafile}"
        return f"{self.bootstrap_servers} ({how})"

    def ssl_context(self) -> ssl.SSLContext:
        """A new TLS context: the CA file (else the system's CAs), the client certificate
        when set, hostname verification unless turned off. Read from the files each time,
        so a client built after a certificate rotation uses the new files."""
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH,
                cafile=str(self.ssl_cafile) if self.ssl_cafile is not None else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise KafkaConfigError(
                f"cannot read the CA file {self.ssl_cafile} ({KAFKA_ENV_PREFIX}SSL_CAFILE): "
                f"{exc.strerror or exc}"
            ) from None
        if self.ssl_certfile is not None:
            keyfile = str(self.ssl_keyfile) if self.ssl_keyfile is not None else None
            try:
                context.load_cert_chain(str(self.ssl_certfile), keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise KafkaConfigError(
                    f"cannot load the client certificate {self.ssl_certfile} and key "
                    f"{self.ssl_keyfile or '(in the certificate file)'}: {exc.strerror or exc}"
                ) from None
        context.check_hostname = self.ssl_check_hostname
        return context


def as_connection(connection: KafkaConnection | str) -> KafkaConnection:
    """A plain string is taken as bootstrap servers with the defaults for the rest."""
    return connection if isinstance(connection, KafkaConnection) else KafkaConnection(connection)


def client_kwargs(connection: KafkaConnection | str) -> KafkaKwargs:
    """The arguments common to every aiokafka client: the one place that knows how to connect.

    A plain string is taken as bootstrap servers with the defaults for the rest (PLAINTEXT).
    Raises :class:`KafkaConfigError` when a TLS file cannot be read.
    """
    conn = as_connection(connection)
    kwargs: KafkaKwargs = {"bootstrap_servers": conn.bootstrap_servers}
    if conn.security_protocol == "PLAINTEXT":
        return kwargs
    kwargs["security_protocol"] = conn.security_protocol
    if conn.uses_tls:
        kwargs["ssl_context"] = conn.ssl_context()
    if conn.uses_sasl and conn.sasl_password is not None:
        kwargs["sasl_mechanism"] = conn.sasl_mechanism
        kwargs["sasl_plain_username"] = conn.sasl_username
        kwargs["sasl_plain_password"] = conn.sasl_password.get_secret_value()
    return kwargs


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return None


def _flag(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise KafkaConfigError(f"{name} is {value!r}: true or false")


@dataclass(frozen=True)
class ConnectionOverrides:
    """Connection settings given on the command line; each one set wins over its variable.
    (No password here: on a command line it is visible to every user of the machine.)"""

    bootstrap_servers: str | None = None
    security_protocol: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool | None = None


def connection_from_env(
    env: Mapping[str, str] | None = None, overrides: ConnectionOverrides | None = None
) -> KafkaConnection:
    """The connection that ``env`` (default: the process environment) describes, with the
    service's variables and defaults; ``overrides`` (command-line options) win."""
    env = os.environ if env is None else env
    given = overrides or ConnectionOverrides()

    def var(name: str) -> str | None:
        return _first(env, f"{KAFKA_ENV_PREFIX}{name}")

    def path(value: Path | None, name: str) -> Path | None:
        if value is not None:
            return value
        found = var(name)
        return Path(found) if found else None

    password = env.get(f"{KAFKA_ENV_PREFIX}SASL_PASSWORD", "")
    check = var("SSL_CHECK_HOSTNAME")
    return KafkaConnection(
        bootstrap_servers=given.bootstrap_servers
        or _first(env, f"{ENV_PREFIX}BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS")
        or DEFAULT_BOOTSTRAP_SERVERS,
        security_protocol=security_protocol(
            given.security_protocol or var("SECURITY_PROTOCOL") or "PLAINTEXT"
        ),
        sasl_mechanism=sasl_mechanism(given.sasl_mechanism or var("SASL_MECHANISM") or "PLAIN"),
        sasl_username=given.sasl_username or var("SASL_USERNAME"),
        sasl_password=SecretStr(password) if password else None,
        ssl_cafile=path(given.ssl_cafile, "SSL_CAFILE"),
        ssl_certfile=path(given.ssl_certfile, "SSL_CERTFILE"),
        ssl_keyfile=path(given.ssl_keyfile, "SSL_KEYFILE"),
        ssl_check_hostname=(
            given.ssl_check_hostname
            if given.ssl_check_hostname is not None
            else _flag(f"{KAFKA_ENV_PREFIX}SSL_CHECK_HOSTNAME", check)
            if check is not None
            else True
        ),
    )


def tenant_topic(commands_topic: str, tenant: str | None) -> str:
    """The commands topic of ``tenant`` (``MODEL_TRAINER_TENANT``): the only one its Kafka
    user may write to when the service has tenants."""
    return f"{commands_topic}.{tenant}" if tenant and tenant != "default" else commands_topic


@dataclass(frozen=True)
class ClientSettings:
    """Connection and topic names, as the client uses them."""

    connection: KafkaConnection = field(default_factory=KafkaConnection)
    commands_topic: str = COMMANDS_TOPIC
    events_topic: str = EVENTS_TOPIC
    state_topic: str = STATE_TOPIC
    logs_topic: str = LOGS_TOPIC

    @property
    def bootstrap_servers(self) -> str:
        return self.connection.bootstrap_servers

    @classmethod
    def from_env(
        cls,
        bootstrap_servers: str | None = None,
        env: Mapping[str, str] | None = None,
        overrides: ConnectionOverrides | None = None,
    ) -> ClientSettings:
        """Settings from ``env`` (default: the process environment); an explicit
        ``bootstrap_servers`` (the ``--bootstrap-servers`` option) and ``overrides`` (the
        other connection options) win over it."""
        env = os.environ if env is None else env
        given = overrides or ConnectionOverrides()
        if bootstrap_servers:
            given = replace(given, bootstrap_servers=bootstrap_servers)
        return cls(
            connection=connection_from_env(env, given),
            commands_topic=tenant_topic(
                _first(env, f"{ENV_PREFIX}COMMANDS_TOPIC") or COMMANDS_TOPIC,
                _first(env, f"{ENV_PREFIX}TENANT"),
            ),
            events_topic=_first(env, f"{ENV_PREFIX}EVENTS_TOPIC") or EVENTS_TOPIC,
            state_topic=_first(env, f"{ENV_PREFIX}STATE_TOPIC") or STATE_TOPIC,
            logs_topic=_first(env, f"{ENV_PREFIX}LOGS_TOPIC") or LOGS_TOPIC,
        )
