"""Shared fixtures: one real Kafka broker for the session.

The broker is, in order: ``KAFKA_BOOTSTRAP_SERVERS`` when set; a testcontainers Kafka
container when a Docker engine answers; otherwise the project's local KRaft broker
(``deploy/local_kafka.py``), started here and stopped at the end of the session.
``secure_kafka`` is a second local broker, SASL_SSL only, started when a test asks for it.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))

from local_kafka import LocalKafka, free_port  # noqa: E402
from local_s3 import LocalS3  # noqa: E402

from tests.deep import is_deep  # noqa: E402
from tests.figures import FIGURE, Figure  # noqa: E402
from tests.layers import (  # noqa: E402
    COST_ORDER,
    LAYER,
    cost_rank,
    count_layers,
    guard_start,
    layer_of,
    server_markers_missing,
)


@pytest.fixture
def figure(record_property: Callable[[str, object], None]) -> Figure:
    """Report a measured figure: printed in the "figures" section of the summary."""
    return lambda line: record_property(FIGURE, line)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--real-kafka",
        action="store_true",
        help="run the shell's world tests (tests/world) against the real broker too",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The layer travels with the test's reports (user_properties), so the controller of a
    # pytest-xdist run counts what its workers ran.
    # The deep ones (tests/deep.py) carry their marker from the table, so `make test` can
    # leave them to `make test-deep`.
    for item in items:
        item.user_properties.append((LAYER, layer_of(item)))
        if is_deep(item.nodeid):
            item.add_marker(pytest.mark.deep)
    # The longest files first: pytest-xdist hands out files in this order, so the last ones
    # handed out are short, and no process is left running a long file alone at the end. A
    # file's place is its costliest test's, so its tests stay together (its module fixtures
    # start once).
    place: dict[Path, int] = {}
    for item in items:
        place[item.path] = min(place.get(item.path, len(COST_ORDER)), cost_rank(item))
    items.sort(key=lambda item: place[item.path])


def pytest_collection_finish(session: pytest.Session) -> None:
    # Collection imported torch, transformers and the rest: millions of objects that live
    # as long as the run. Frozen, the full collections during the tests skip them (in one
    # process, `make test-fast`'s full collections took 4.1 s of CPU before, 2.8 s after).
    gc.freeze()


def pytest_unconfigure(config: pytest.Config) -> None:
    # Handed back before exit, so the interpreter's last collection frees them (frozen,
    # nanobind's leak check reports triton's objects as leaked).
    gc.unfreeze()


def pytest_runtest_setup(item: pytest.Item) -> None:
    # `make test-fast` deselects by marker: a test that reaches a server without its marker
    # would start one there, and the fast suite would quietly stop being fast.
    missing = server_markers_missing(item)
    if missing:
        pytest.fail(f"{item.nodeid} uses a server but lacks the marker(s) {missing}", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _servers_need_markers() -> Iterator[None]:
    """A test that starts a broker or an S3 server by hand carries its marker too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalKafka, "start", guard_start(LocalKafka.start, "kafka"))
        patch.setattr(LocalS3, "start", guard_start(LocalS3.start, "s3"))
        yield


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = [
        str(value)
        for report in terminalreporter.getreports("passed")
        for name, value in report.user_properties
        if name == FIGURE
    ]
    if lines:
        terminalreporter.section("figures")
        for line in lines:
            terminalreporter.write_line(line)
    counts = count_layers(
        report
        for outcome in ("passed", "failed", "skipped", "error", "xfailed", "xpassed")
        for report in terminalreporter.stats.get(outcome, [])
        if isinstance(report, pytest.TestReport)  # not a collection error's CollectReport
    )
    if counts:
        terminalreporter.section("tests per layer")
        for line in counts:
            terminalreporter.write_line(line)


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real broker, shared by the whole session."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        # testcontainers' Kafka module scripts Confluent's image; cp-kafka 7.9 is Kafka 3.9,
        # the README's fallback release.
        with KafkaContainer("confluentinc/cp-kafka:7.9.0").with_kraft() as container:
            yield str(container.get_bootstrap_server())
        return
    broker = LocalKafka(workdir=tmp_path_factory.mktemp("kafka"), port=free_port())
    broker.start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A broker of our own that a test may stop and start (for broker-restart tests)."""
    broker = LocalKafka(workdir=tmp_path_factory.mktemp("kafka-own"), port=free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    """A local broker whose client listener is SASL_SSL: SCRAM-SHA-512 (user and password in
    ``client_env()``) over TLS from a CA made for the session (``ca_file``), with Kafka's
    authorizer on: the service's user is a super user, and the tenants alice, bob and ops have
    users of their own (``client_env(tenant)``) and the ACLs a test grants them."""
    broker = LocalKafka(
        workdir=tmp_path_factory.mktemp("kafka-secure"),
        port=free_port(),
        secure=True,
        tenants=("alice", "bob", "ops"),
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def local_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A real S3 server (SeaweedFS ``weed mini``, deploy/local_s3.py) on free loopback ports,
    with the bucket ``model-trainer``; its client settings are ``client_env()``."""
    server = LocalS3(workdir=tmp_path_factory.mktemp("s3"), port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()
