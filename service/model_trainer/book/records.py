"""Kafka records as plain data: what the service consumes and what it produces.

Pure (no aiokafka): the job book decides in these terms, and :mod:`.kafka` converts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from model_trainer_contracts import Headers


class TP(NamedTuple):
    """A topic partition (equal to, and hashed like, aiokafka's ``TopicPartition``)."""

    topic: str
    partition: int


@dataclass(frozen=True)
class Record:
    """One consumed record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass(frozen=True)
class Outgoing:
    """One record to produce (to ``partition`` when given, else by its key)."""

    topic: str
    key: bytes
    value: bytes | None
    headers: Headers
    partition: int | None = None
