"""The job book's facts as Kafka records: the one place that knows their wire form.

Pure (no aiokafka, no I/O): each fact is one :class:`Outgoing`, in the book's order, on the
topics the settings name. An event goes to the events topic keyed by its job with its
CloudEvents headers; a state (or its tombstone) to the compacted state topic; a refused
command to the dead-letter topic with the contracts' ``DLQ_*`` headers, cut to fit the
broker's record limit; a moved command to its job's partition, saying where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from model_trainer_contracts import (
    DLQ_ERROR_CODE_HEADER,
    DLQ_ERROR_MESSAGE_HEADER,
    DLQ_ORIGINAL_OFFSET_HEADER,
    DLQ_ORIGINAL_PARTITION_HEADER,
    DLQ_ORIGINAL_TOPIC_HEADER,
    EventBase,
    Headers,
    JobStateV1,
    ce_headers,
    encode,
)

from model_trainer.book.effects import (
    FORWARDED_FROM,
    FORWARDED_TENANT,
    DeadLetter,
    Fact,
    Forward,
    Publish,
    Tombstone,
)

DEAD_LETTER_MAX_BYTES = 900_000  # under Kafka's default 1 MB record limit, headers included
DEAD_LETTER_MAX_KEY_BYTES = 1024
DEAD_LETTER_MAX_MESSAGE = 2048  # characters of the error message kept in its header
ORIGINAL_KEY_SIZE_HEADER = "original_key_size"  # set when the dead letter's key was cut
ORIGINAL_SIZE_HEADER = "original_size"  # set when its value was cut


@dataclass(frozen=True)
class Outgoing:
    """One record to produce (to ``partition`` when given, else by its key)."""

    topic: str
    key: bytes
    value: bytes | None
    headers: Headers
    partition: int | None = None


class Topics(Protocol):
    """Where facts go (the :class:`~model_trainer.settings.Settings` and the book's
    :class:`~model_trainer.book.effects.Policy` both say)."""

    @property
    def events_topic(self) -> str: ...

    @property
    def state_topic(self) -> str: ...

    @property
    def dead_letter_topic(self) -> str: ...


def records(publish: Publish, topics: Topics) -> list[Outgoing]:
    """The records of one transaction, in the order the book decided its facts."""
    return [record(fact, topics) for fact in publish.facts]


def record(fact: Fact, topics: Topics) -> Outgoing:
    """One fact's record."""
    if isinstance(fact, EventBase):
        return Outgoing(topics.events_topic, fact.job_id.encode(), encode(fact), ce_headers(fact))
    if isinstance(fact, JobStateV1):
        return Outgoing(topics.state_topic, fact.job_id.encode(), encode(fact), [])
    if isinstance(fact, Tombstone):
        return Outgoing(topics.state_topic, fact.job_id.encode(), None, [])
    if isinstance(fact, DeadLetter):
        return dead_letter(fact, topics.dead_letter_topic)
    return forward(fact)


def dead_letter(letter: DeadLetter, topic: str) -> Outgoing:
    """The refused record as it came, with why in its headers."""
    refused, error = letter.record, letter.error
    headers: Headers = [
        (DLQ_ERROR_CODE_HEADER, str(error.code).encode()),
        (DLQ_ERROR_MESSAGE_HEADER, error.message[:DEAD_LETTER_MAX_MESSAGE].encode()),
        (DLQ_ORIGINAL_TOPIC_HEADER, refused.topic.encode()),
        (DLQ_ORIGINAL_PARTITION_HEADER, str(refused.partition).encode()),
        (DLQ_ORIGINAL_OFFSET_HEADER, str(refused.offset).encode()),
    ]
    key = refused.key or b""
    if len(key) > DEAD_LETTER_MAX_KEY_BYTES:
        # Key and value together must fit the record limit: the key is cut too.
        headers.append((ORIGINAL_KEY_SIZE_HEADER, str(len(key)).encode()))
        key = key[:DEAD_LETTER_MAX_KEY_BYTES]
    value = refused.value
    if len(value) > DEAD_LETTER_MAX_BYTES:
        # The dead letter must fit the broker's record limit, or publishing it would be
        # retried forever; its header says how much of the original it keeps.
        headers.append((ORIGINAL_SIZE_HEADER, str(len(value)).encode()))
        value = value[:DEAD_LETTER_MAX_BYTES]
    return Outgoing(topic, key, value, headers)


def forward(moved: Forward) -> Outgoing:
    """The command as it came, to its job's partition, saying where it was read (and for
    which tenant, replacing any tenant header it came with)."""
    command = moved.record
    headers = [(name, value) for name, value in command.headers if name != FORWARDED_TENANT]
    headers.append((FORWARDED_FROM, moved.origin.encode()))
    if moved.tenant is not None:
        headers.append((FORWARDED_TENANT, moved.tenant.encode()))
    return Outgoing(moved.to.topic, command.key or b"", command.value, headers, moved.to.partition)
