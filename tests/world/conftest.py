"""The ``stage`` fixture: each shell test runs in the in-memory world and, given
``--real-kafka`` (or ``MODEL_TRAINER_TEST_REAL_KAFKA=1``), against the real broker too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from local_kafka import LocalKafka

from .stage import MemoryStage, OutageStage, RealStage, Stage

REAL_KAFKA_ENV = "MODEL_TRAINER_TEST_REAL_KAFKA"


def real_kafka_wanted(config: pytest.Config) -> bool:
    return bool(config.getoption("--real-kafka")) or os.environ.get(REAL_KAFKA_ENV) == "1"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "world" not in metafunc.fixturenames:
        return
    worlds = [pytest.param("memory", id="memory")]
    if real_kafka_wanted(metafunc.config):
        worlds.append(pytest.param("kafka", id="kafka", marks=pytest.mark.kafka))
    metafunc.parametrize("world", worlds)


@pytest.fixture
def stage(world: str, request: pytest.FixtureRequest, tmp_path: Path) -> Stage:
    if world == "memory":
        return MemoryStage(tmp_path)
    bootstrap: str = request.getfixturevalue("kafka_bootstrap")
    return RealStage(tmp_path, bootstrap)


@pytest.fixture
def outage_stage(world: str, request: pytest.FixtureRequest, tmp_path: Path) -> OutageStage:
    """A stage whose broker a test may take away: the world's, or a real broker of the
    session that only such tests use (``local_broker``)."""
    if world == "memory":
        return MemoryStage(tmp_path)
    broker: LocalKafka = request.getfixturevalue("local_broker")
    return RealStage(tmp_path, broker.bootstrap_servers, broker)
