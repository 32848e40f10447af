"""Kafka records as plain data: what the service consumes (the contracts' :class:`Record`
and :class:`TP`, the client's too) and what it produces.

Pure (no aiokafka): the job book decides in these terms, and :mod:`.kafka` converts.
"""

from __future__ import annotations

from dataclasses import dataclass

from model_trainer_contracts import Headers
from model_trainer_contracts.records import TP as TP
from model_trainer_contracts.records import Record as Record


@dataclass(frozen=True)
class Outgoing:
    """One record to produce (to ``partition`` when given, else by its key)."""

    topic: str
    key: bytes
    value: bytes | None
    headers: Headers
    partition: int | None = None
