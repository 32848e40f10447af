"""A real single-node Apache Kafka broker (KRaft) on loopback, without Docker.

The broker's jars come from Maven Central: ``deploy/kafka/pom.xml`` pins the release and
Maven copies it, with a log4j2 binding, into a cache directory outside the clone
(``$MODEL_TRAINER_CACHE``, default ``~/.cache/model-trainer``), keyed by the pom's digest, so
later runs start without the network. Storage is formatted on first start; the broker runs
as its own process session with a pid file, logs to ``<dir>/broker.log`` and is stopped
with SIGTERM (SIGKILL after a grace), leaving no orphan behind.

``--secure`` starts the same broker with a SASL_SSL client listener instead of PLAINTEXT:
SCRAM-SHA-512 credentials created when the storage is formatted, and TLS from a CA and a
broker certificate generated for the run (:mod:`local_tls`, which needs the ``cryptography``
package). The listener between the broker and its controller stays PLAINTEXT on loopback.
The client's settings (``MODEL_TRAINER_KAFKA_*``, the password included) are written to
``<dir>/client.env``, readable by its owner only.

``--tenants a,b`` (with ``--secure``) adds Kafka's KRaft ``StandardAuthorizer``: the service's
user and the broker's own (PLAINTEXT, loopback) listeners' ``ANONYMOUS`` principal are super
users; each tenant gets a SCRAM user (``<dir>/tenant-<name>.env``) and ACLs, created with
Kafka's Admin API (``deploy/kafka/TenantAcls.java``): it may write and describe its commands
topic ``<commands_topic>.<tenant>`` and read and describe the events and state topics,
nothing else.

Standard library only otherwise: the test fixtures import it, and ``make`` runs it as a
script::

    python deploy/local_kafka.py start --dir .kafka --port 9092
    .venv/bin/python deploy/local_kafka.py start --secure --dir .kafka-secure --port 9093
    python deploy/local_kafka.py stop --dir .kafka
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import local_daemon

POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
LOG4J_CONFIG = Path(__file__).resolve().parent / "kafka" / "log4j2.properties"
ACL_TOOL = Path(__file__).resolve().parent / "kafka" / "TenantAcls.java"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
READY_TIMEOUT_S = 90.0
STOP_GRACE_S = 20.0
# The secured listener's SASL mechanism and its one user (the password is made per broker).
SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_USER = "model-trainer"
SECURE_LISTENER = "SASL_SSL"


class BrokerError(RuntimeError):
    """The local broker could not be resolved, started or stopped; the message says why."""


def cache_root() -> Path:
    return Path(os.environ.get("MODEL_TRAINER_CACHE", Path.home() / ".cache" / "model-trainer"))


def ensure_jars() -> Path:
    """Return a directory holding the pinned broker's jars, resolving them once with Maven."""
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    libs = cache_root() / f"kafka-{digest}" / "libs"
    if (libs / ".complete").exists():
        return libs
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is not on PATH: install Maven 3.8+ to resolve Kafka's jars")
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
    cmd = [
        "mvn",
        "-B",
        "-q",
        "-f",
        str(POM),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(f"mvn could not resolve Kafka's jars:\n{result.stdout}{result.stderr}")
    (staging / ".complete").touch()
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class LocalKafka:
    """One combined broker+controller whose state lives in ``workdir``."""

    workdir: Path
    port: int = 9092
    controller_port: int = 0
    host: str = "127.0.0.1"
    # A SASL_SSL (SCRAM-SHA-512 over TLS) client listener instead of PLAINTEXT.
    secure: bool = False
    # With ``secure``: the authorizer on, a SCRAM user per tenant (ACLs: :meth:`grant`).
    tenants: tuple[str, ...] = ()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def tls_dir(self) -> Path:
        return self.workdir / "tls"

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients of the secured listener trust."""
        return self.tls_dir / "ca.pem"

    @property
    def client_env_file(self) -> Path:
        return self.workdir / "client.env"

    def tenant_env_file(self, tenant: str) -> Path:
        return self.workdir / f"tenant-{tenant}.env"

    def client_env(self, tenant: str | None = None) -> dict[str, str]:
        """The ``MODEL_TRAINER_*`` variables that connect a client (service, CLI) to it; as
        ``tenant``'s user when given."""
        env = {"MODEL_TRAINER_BOOTSTRAP_SERVERS": self.bootstrap_servers}
        if self.secure:
            path = self.client_env_file if tenant is None else self.tenant_env_file(tenant)
            for line in path.read_text().splitlines():
                name, sep, value = line.partition("=")
                if sep and not name.startswith("#"):
                    env[name.strip()] = value.strip()
        return env

    @property
    def pid_file(self) -> Path:
        return self.workdir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.workdir / "broker.log"

    def _listeners(self, controller_port: int, internal_port: int) -> list[str]:
        controller = f"CONTROLLER://{self.host}:{controller_port}"
        if not self.secure:
            return [
                f"listeners=PLAINTEXT://{self.host}:{self.port},{controller}",
                f"advertised.listeners=PLAINTEXT://{self.host}:{self.port}",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
            ]
        from local_tls import TlsFiles

        tls = TlsFiles.under(self.tls_dir)
        client = f"{SECURE_LISTENER}://{self.host}:{self.port}"
        internal = f"INTERNAL://{self.host}:{internal_port}"
        prefix = f"listener.name.{SECURE_LISTENER.lower()}"
        authorizer = [
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # The controller and the broker speak PLAINTEXT on loopback as ANONYMOUS.
            f"super.users=User:{SCRAM_USER};User:ANONYMOUS",
        ]
        return [
            *(authorizer if self.tenants else []),
            f"listeners={client},{internal},{controller}",
            f"advertised.listeners={client},{internal}",
            "listener.security.protocol.map="
            f"CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,{SECURE_LISTENER}:{SECURE_LISTENER}",
            "inter.broker.listener.name=INTERNAL",
            f"{prefix}.sasl.enabled.mechanisms={SCRAM_MECHANISM}",
            f"{prefix}.{SCRAM_MECHANISM.lower()}.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            # Kafka's PEM stores, the PEM text inline (a properties value, newlines escaped).
            f"{prefix}.ssl.keystore.type=PEM",
            f"{prefix}.ssl.keystore.certificate.chain={_inline(tls.broker_chain)}",
            f"{prefix}.ssl.keystore.key={_inline(tls.broker_key)}",
            f"{prefix}.ssl.truststore.type=PEM",
            f"{prefix}.ssl.truststore.certificates={_inline(tls.ca_cert)}",
        ]

    def _properties(self, controller_port: int, internal_port: int) -> str:
        data = self.workdir / "data"
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers={self.host}:{controller_port}",
                *self._listeners(controller_port, internal_port),
                "controller.listener.names=CONTROLLER",
                f"log.dirs={data}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "transaction.state.log.num.partitions=4",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "log.cleaner.backoff.ms=1000",
                "",
            ]
        )

    def _stored_port(self, name: str) -> int | None:
        """A port of an earlier start (KRaft stores the controller voter's endpoint)."""
        try:
            return int((self.workdir / f"{name}.port").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _write_user_env(self, tenant: str | None) -> str:
        """Write how the service's user (``tenant`` None) or a tenant's user connects, and
        return its password. The password of the first start stays (the storage holds its
        SCRAM credential); the rest is written again, so that a start on another port is what
        the file says."""
        path = self.client_env_file if tenant is None else self.tenant_env_file(tenant)
        earlier = self.client_env(tenant) if path.exists() else {}
        password = earlier.get("MODEL_TRAINER_KAFKA_SASL_PASSWORD") or secrets.token_urlsafe(18)
        settings = [
            ("MODEL_TRAINER_BOOTSTRAP_SERVERS", self.bootstrap_servers),
            ("MODEL_TRAINER_KAFKA_SECURITY_PROTOCOL", SECURE_LISTENER),
            ("MODEL_TRAINER_KAFKA_SASL_MECHANISM", SCRAM_MECHANISM),
            ("MODEL_TRAINER_KAFKA_SASL_USERNAME", SCRAM_USER if tenant is None else tenant),
            ("MODEL_TRAINER_KAFKA_SASL_PASSWORD", password),
            ("MODEL_TRAINER_KAFKA_SSL_CAFILE", str(self.ca_file)),
        ]
        if tenant is not None:
            settings.append(("MODEL_TRAINER_TENANT", tenant))
        path.touch(mode=0o600)
        path.write_text("".join(f"{name}={value}\n" for name, value in settings))
        return password

    def _secure_material(self, formatted: bool) -> list[str]:
        """Make the TLS files and the client's settings once; the storage tool's arguments
        that create the SCRAM user when the storage is still to be formatted."""
        from local_tls import TlsFiles, issue

        if formatted and not self.client_env_file.exists():
            raise BrokerError(
                f"{self.workdir} holds a broker formatted without --secure (no SCRAM user): "
                "start it with --fresh"
            )
        missing = [t for t in self.tenants if not self.tenant_env_file(t).exists()]
        if formatted and missing:
            raise BrokerError(
                f"{self.workdir} holds a broker formatted without the tenants {missing} (no "
                "SCRAM users): start it with --fresh"
            )
        if not TlsFiles.under(self.tls_dir).exist():
            issue(self.tls_dir, [self.host])
        users = [(SCRAM_USER, self._write_user_env(None))]
        users += [(tenant, self._write_user_env(tenant)) for tenant in self.tenants]
        if formatted:
            return []
        return [
            arg
            for name, secret in users
            for arg in ("--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={secret}]")
        ]

    def grant(self, commands_topic: str, read_topics: list[str]) -> str:
        """Create the tenants' ACLs for these topics (see the module docstring) through the
        broker's own PLAINTEXT listener; returns what was created, one ACL a line."""
        if not self.tenants:
            raise BrokerError("no tenants to grant anything to: start with --tenants")
        internal = self._stored_port("internal")
        java = shutil.which("java")
        if java is None or internal is None:
            raise BrokerError("the ACLs need java on PATH and a broker started with --secure")
        made = subprocess.run(
            [
                java,
                "-cp",
                f"{ensure_jars()}/*",
                str(ACL_TOOL),
                f"{self.host}:{internal}",
                commands_topic,
                ",".join(read_topics),
                *self.tenants,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=180,
        )
        if made.returncode != 0:
            raise BrokerError(f"creating the tenants' ACLs failed:\n{made.stdout}{made.stderr}")
        return made.stdout

    def running_pid(self) -> int | None:
        """The broker's pid when its pid file names a live process, else None."""
        return local_daemon.running_pid(self.pid_file)

    def start(self) -> None:
        """Start the broker in the background and return once it accepts connections."""
        if self.running_pid() is not None:
            raise BrokerError(f"a broker already runs from {self.workdir} ({self.pid_file})")
        if port_open(self.host, self.port):
            raise BrokerError(f"port {self.port} is taken: stop what listens there or pick --port")
        libs = ensure_jars()
        self.workdir.mkdir(parents=True, exist_ok=True)
        properties = self.workdir / "server.properties"
        controller_port = self.controller_port or self._stored_port("controller") or free_port()
        (self.workdir / "controller.port").write_text(str(controller_port))
        internal_port = 0
        formatted = (self.workdir / "data" / "meta.properties").exists()
        scram: list[str] = []
        if self.secure:
            internal_port = self._stored_port("internal") or free_port()
            (self.workdir / "internal.port").write_text(str(internal_port))
            scram = self._secure_material(formatted)
        properties.touch(mode=0o600)  # the broker's key is in it when secure
        properties.write_text(self._properties(controller_port, internal_port))
        classpath = f"{libs}/*"
        java = shutil.which("java")
        if java is None:
            raise BrokerError("java is not on PATH: Kafka needs Java 17 or newer")
        jvm = [
            java,
            "-Xms256m",
            "-Xmx768m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.workdir}",
            "-cp",
            classpath,
        ]
        if not formatted:
            fmt = subprocess.run(
                [
                    *jvm,
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    "-t",
                    uuid.uuid4().hex[:22],
                    "-c",
                    str(properties),
                    *scram,
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if fmt.returncode != 0:
                raise BrokerError(f"formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")
        proc = local_daemon.launch(
            [*jvm, "kafka.Kafka", str(properties)], pid_file=self.pid_file, log_file=self.log_file
        )
        why = local_daemon.wait_ready(
            proc,
            lambda: port_open(self.host, self.port),
            pid_file=self.pid_file,
            timeout_s=READY_TIMEOUT_S,
            poll_s=0.2,
            grace_s=STOP_GRACE_S,
        )
        if why is not None:
            raise BrokerError(f"the broker {why}; see {self.log_file}")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after a grace); a no-op when none runs."""
        local_daemon.stop(self.pid_file, grace_s=STOP_GRACE_S, poll_s=0.2)


def _inline(pem: Path) -> str:
    """A PEM file as one properties value: its newlines escaped."""
    return pem.read_text().strip().replace("\n", "\\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("action", choices=["fetch", "start", "stop", "status"])
    parser.add_argument("--dir", type=Path, default=Path(".kafka"), help="broker state and log")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--fresh", action="store_true", help="wipe --dir before starting")
    parser.add_argument(
        "--secure",
        action="store_true",
        help="a SASL_SSL listener (SCRAM-SHA-512, a CA made for the run) instead of PLAINTEXT",
    )
    parser.add_argument(
        "--tenants",
        default="",
        help="with --secure: comma-separated tenants, each a SCRAM user with ACLs on its "
        "commands topic (<commands-topic>.<tenant>) and the events topic; the authorizer on",
    )
    parser.add_argument("--commands-topic", default="trainer.jobs", help="for the ACLs")
    parser.add_argument("--events-topic", default="trainer.metrics", help="for the ACLs")
    parser.add_argument("--state-topic", default="trainer.jobs.state", help="for the ACLs")
    args = parser.parse_args(argv)
    tenants = tuple(t.strip() for t in args.tenants.split(",") if t.strip())
    if tenants and not args.secure:
        parser.error("--tenants needs --secure")
    broker = LocalKafka(
        workdir=args.dir.resolve(), port=args.port, secure=args.secure, tenants=tenants
    )
    try:
        if args.action == "fetch":
            print(f"kafka jars: {ensure_jars()}")
        elif args.action == "start":
            if args.fresh:
                broker.stop()
                shutil.rmtree(broker.workdir, ignore_errors=True)
            started = time.monotonic()
            broker.start()
            print(
                f"kafka broker up at {broker.bootstrap_servers} in "
                f"{time.monotonic() - started:.1f}s (log: {broker.log_file})"
            )
            if broker.secure:
                print(
                    f"SASL_SSL, {SCRAM_MECHANISM} user {SCRAM_USER}, CA {broker.ca_file}; "
                    f"the client's settings: set -a; . {broker.client_env_file}; set +a"
                )
            if tenants:
                read = [args.events_topic, args.state_topic]
                print(broker.grant(args.commands_topic, read), end="")
                for tenant in tenants:
                    print(f"tenant {tenant}: set -a; . {broker.tenant_env_file(tenant)}; set +a")
        elif args.action == "stop":
            broker.stop()
            print("kafka broker stopped")
        else:
            pid = broker.running_pid()
            print(f"kafka broker running, pid {pid}" if pid else "kafka broker not running")
            return 0 if pid else 1
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
