"""A Kafka record as plain data: what the service's job book decides on and what the
client's readers return, one type for both (no aiokafka here: the client's
``model_trainer_client.kafka`` converts aiokafka's messages)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from .codec import Headers


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
    timestamp_ms: int = -1  # the broker's; -1 where none was read

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)
