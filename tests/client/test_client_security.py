"""The Kafka connection description, without a broker: variables and options, consistency,
the aiokafka arguments it makes (TLS context, SASL), and the password kept out of sight."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from local_kafka import free_port
from local_tls import TlsFiles, issue, write_ca
from model_trainer.commands.cli import app as service_app
from model_trainer.settings import Settings
from model_trainer_client.cli import app as client_app
from model_trainer_client.kafka import KafkaTLSError, bootstrap_hosts, probe_brokers
from model_trainer_client.settings import (
    ClientSettings,
    ConnectionOverrides,
    KafkaConfigError,
    KafkaConnection,
    client_kwargs,
    connection_from_env,
)
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

PASSWORD = "s3cret-Quokka-Pa55-0042"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return issue(tmp_path_factory.mktemp("tls"), ["127.0.0.1"])


def _scram_env(ca: Path) -> dict[str, str]:
    return {
        "MODEL_TRAINER_BOOTSTRAP_SERVERS": "broker-1:9093,broker-2:9093",
        "MODEL_TRAINER_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "MODEL_TRAINER_KAFKA_SASL_MECHANISM": "scram-sha-512",
        "MODEL_TRAINER_KAFKA_SASL_USERNAME": "model-trainer",
        "MODEL_TRAINER_KAFKA_SASL_PASSWORD": PASSWORD,
        "MODEL_TRAINER_KAFKA_SSL_CAFILE": str(ca),
    }


def test_plaintext_by_default_and_its_arguments_unchanged() -> None:
    conn = connection_from_env({})
    assert conn == KafkaConnection()
    assert conn.security_protocol == "PLAINTEXT"
    assert client_kwargs(conn) == {"bootstrap_servers": "127.0.0.1:9092"}
    assert client_kwargs("h:1") == {"bootstrap_servers": "h:1"}


def test_scram_over_tls_from_the_variables(tls: TlsFiles) -> None:
    conn = connection_from_env(_scram_env(tls.ca_cert))
    assert (conn.security_protocol, conn.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    kwargs = client_kwargs(conn)
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "bootstrap_servers": "broker-1:9093,broker-2:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "model-trainer",
        "sasl_plain_password": PASSWORD,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1  # our CA, not the system's
    assert bootstrap_hosts(conn.bootstrap_servers) == [("broker-1", 9093), ("broker-2", 9093)]


def test_plain_over_tls_with_the_system_cas() -> None:
    """Confluent Cloud's shape: SASL_SSL, PLAIN, an API key and secret, public CAs."""
    conn = KafkaConnection(
        "pkc-1.eu-west-1.aws.confluent.cloud:9092",
        security_protocol="SASL_SSL",
        sasl_username="API-KEY",
        sasl_password=SecretStr("api-secret"),
    )
    kwargs = client_kwargs(conn)
    assert kwargs["sasl_mechanism"] == "PLAIN"
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_mutual_tls_and_hostname_check_off(tls: TlsFiles) -> None:
    conn = KafkaConnection(
        "b:9093",
        security_protocol="SSL",
        ssl_cafile=tls.ca_cert,
        ssl_certfile=tls.broker_chain,
        ssl_keyfile=tls.broker_key,
        ssl_check_hostname=False,
    )
    kwargs = client_kwargs(conn)
    assert "sasl_mechanism" not in kwargs
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is False
    assert context.verify_mode == ssl.CERT_REQUIRED  # the chain is still verified


def test_options_win_over_variables(tls: TlsFiles) -> None:
    env = _scram_env(tls.ca_cert)
    given = ConnectionOverrides(
        bootstrap_servers="other:9094",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="someone",
        ssl_check_hostname=False,
    )
    settings = ClientSettings.from_env(env=env, overrides=given)
    conn = settings.connection
    assert (conn.bootstrap_servers, conn.sasl_mechanism) == ("other:9094", "SCRAM-SHA-256")
    assert (conn.sasl_username, conn.ssl_check_hostname) == ("someone", False)
    assert conn.sasl_password == SecretStr(PASSWORD)  # only ever from the environment
    assert ClientSettings.from_env("b:1", env=env, overrides=given).bootstrap_servers == "b:1"
    off = connection_from_env({**env, "MODEL_TRAINER_KAFKA_SSL_CHECK_HOSTNAME": "false"})
    assert off.ssl_check_hostname is False


def test_the_service_and_the_client_read_the_same_connection(
    tls: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**_scram_env(tls.ca_cert), "MODEL_TRAINER_KAFKA_SSL_CHECK_HOSTNAME": "false"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().connection == connection_from_env(env)
    monkeypatch.setenv("MODEL_TRAINER_KAFKA_SSL_CERTFILE", "")  # empty: unset
    assert Settings().kafka_ssl_certfile is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: KafkaConnection(security_protocol="SASL_SSL"), "needs a SASL user name"),
        (
            lambda: KafkaConnection(security_protocol="SASL_PLAINTEXT", sasl_username="u"),
            "needs a SASL user name and password",
        ),
        (
            lambda: KafkaConnection(sasl_username="u", sasl_password=SecretStr("p")),
            "set but the security protocol is PLAINTEXT",
        ),
        (
            lambda: KafkaConnection(ssl_cafile=Path("ca.pem")),
            "TLS files are set but the security protocol is PLAINTEXT",
        ),
        (
            lambda: KafkaConnection(security_protocol="SSL", ssl_keyfile=Path("k.pem")),
            "SSL_KEYFILE is set without",
        ),
    ],
)
def test_inconsistent_settings_are_refused(
    make: Callable[[], KafkaConnection], message: str
) -> None:
    with pytest.raises(KafkaConfigError, match=message):
        make()


def test_unknown_protocol_or_mechanism_is_refused() -> None:
    with pytest.raises(KafkaConfigError, match="unknown Kafka security protocol 'TLS'"):
        connection_from_env({"MODEL_TRAINER_KAFKA_SECURITY_PROTOCOL": "TLS"})
    with pytest.raises(KafkaConfigError, match="unknown SASL mechanism 'GSSAPI'"):
        connection_from_env({"MODEL_TRAINER_KAFKA_SASL_MECHANISM": "GSSAPI"})
    with pytest.raises(KafkaConfigError, match="true or false"):
        connection_from_env({"MODEL_TRAINER_KAFKA_SSL_CHECK_HOSTNAME": "maybe"})


def test_unreadable_tls_files_are_named(tmp_path: Path, tls: TlsFiles) -> None:
    missing = KafkaConnection("b:1", security_protocol="SSL", ssl_cafile=tmp_path / "nope.pem")
    with pytest.raises(KafkaConfigError, match=r"cannot read the CA file .*nope\.pem"):
        client_kwargs(missing)
    other_key = tmp_path / "other-key.pem"
    other_key.write_bytes(issue(tmp_path / "other", ["x"]).broker_key.read_bytes())
    mismatched = KafkaConnection(
        "b:1",
        security_protocol="SSL",
        ssl_certfile=tls.broker_chain,
        ssl_keyfile=other_key,
    )
    with pytest.raises(KafkaConfigError, match="cannot load the client certificate"):
        client_kwargs(mismatched)


def test_the_password_stays_out_of_reprs_and_errors(
    tls: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = connection_from_env(_scram_env(tls.ca_cert))
    assert PASSWORD not in repr(conn)
    assert PASSWORD not in conn.describe()
    for name, value in _scram_env(tls.ca_cert).items():
        monkeypatch.setenv(name, value)
    assert PASSWORD not in repr(Settings())
    monkeypatch.setenv("MODEL_TRAINER_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert "TLS files are set but the security protocol is SASL_PLAINTEXT" in str(refused.value)
    assert PASSWORD not in str(refused.value)


def test_serve_reports_inconsistent_settings_and_exits_2(tmp_path: Path) -> None:
    env = {
        "MODEL_TRAINER_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
        "MODEL_TRAINER_KAFKA_SASL_USERNAME": "model-trainer",
        "MODEL_TRAINER_KAFKA_SASL_PASSWORD": PASSWORD,
    }
    result = CliRunner().invoke(service_app, ["serve"], env=env)
    assert result.exit_code == 2, result.output
    assert "invalid settings" in result.output
    assert "the security protocol is PLAINTEXT" in result.output
    assert PASSWORD not in result.output


def test_client_commands_refuse_bad_connection_options() -> None:
    result = CliRunner().invoke(
        client_app, ["jobs", "--security-protocol", "TLS"], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2, result.output
    assert "unknown Kafka security protocol 'TLS'" in result.output


async def test_probe_of_a_closed_port_is_unreachable_not_refused() -> None:
    port = free_port()
    probe = await probe_brokers(f"127.0.0.1:{port}", timeout_s=2)
    assert probe.refused is None
    assert probe.problem is not None
    assert f"127.0.0.1:{port}" in probe.problem


def test_a_ca_alone_is_written(tmp_path: Path) -> None:
    ca = write_ca(tmp_path / "ca.pem")
    context = ssl.create_default_context(cafile=str(ca))
    assert len(context.get_ca_certs()) == 1


async def test_probe_names_a_certificate_for_another_host(tmp_path: Path) -> None:
    """A TLS listener (no Kafka needed for the handshake) whose certificate names another
    host: refused with the reason, unless hostname verification is off."""
    files = issue(tmp_path, ["other.example"])  # not 127.0.0.1
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(files.broker_chain, files.broker_key)

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        conn = KafkaConnection(
            f"127.0.0.1:{port}", security_protocol="SSL", ssl_cafile=files.ca_cert
        )
        probe = await probe_brokers(conn, timeout_s=5)
        assert isinstance(probe.refused, KafkaTLSError), probe
        assert "is not trusted" in str(probe.refused)
        assert "mismatch" in str(probe.refused)
        relaxed = await probe_brokers(replace(conn, ssl_check_hostname=False), timeout_s=5)
        assert relaxed.refused is None, relaxed
    finally:
        server.close()
        await server.wait_closed()
