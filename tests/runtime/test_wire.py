"""The book's facts on the wire: each kind's record, byte for byte, with the contracts'
header names (the book tests assert the same bytes through :func:`records_of`)."""

from __future__ import annotations

from datetime import UTC, datetime

from model_trainer.book.effects import (
    FORWARDED_FROM,
    FORWARDED_TENANT,
    DeadLetter,
    Forward,
    Publish,
    Tombstone,
)
from model_trainer.book.records import TP, Record
from model_trainer.shell.wire import (
    DEAD_LETTER_MAX_BYTES,
    DEAD_LETTER_MAX_KEY_BYTES,
    Outgoing,
    record,
    records,
)
from model_trainer_contracts import (
    DLQ_ERROR_CODE_HEADER,
    DLQ_ERROR_MESSAGE_HEADER,
    DLQ_ORIGINAL_OFFSET_HEADER,
    DLQ_ORIGINAL_PARTITION_HEADER,
    DLQ_ORIGINAL_TOPIC_HEADER,
    JobStateV1,
    JobStatus,
    ModelTrainerError,
    ModelTrainerErrorCode,
    ce_headers,
    encode,
)

from .book_helpers import BASE, completed

AT = datetime(2026, 1, 1, tzinfo=UTC)


def state(job_id: str) -> JobStateV1:
    return JobStateV1(
        job_id=job_id,
        user_id=7,
        tenant="default",
        status=JobStatus.QUEUED,
        request_digest="d",
        partition=0,
        last_seq=0,
        submitted_at=AT,
        updated_at=AT,
    )


def test_events_states_and_tombstones_go_keyed_by_their_job() -> None:
    event, known = completed("a"), state("a")
    assert record(event, BASE) == Outgoing("events", b"a", encode(event), ce_headers(event))
    assert record(known, BASE) == Outgoing("state", b"a", encode(known), [])
    assert record(Tombstone("a"), BASE) == Outgoing("state", b"a", None, [])


def test_a_dead_letter_too_big_for_the_broker_is_cut_and_says_how_big_it_was() -> None:
    key, value = b"k" * 5000, b"{" + b" " * 900_000
    refused = Record("jobs", 3, 42, key, value, [("traceparent", b"00-1")])
    error = ModelTrainerError(ModelTrainerErrorCode.COMMAND_INVALID, "x" * 3000)
    letter = record(DeadLetter(refused, error), BASE)
    assert letter == Outgoing(
        "dlq",
        key[:DEAD_LETTER_MAX_KEY_BYTES],
        value[:DEAD_LETTER_MAX_BYTES],
        [
            (DLQ_ERROR_CODE_HEADER, b"COMMAND_INVALID"),
            (DLQ_ERROR_MESSAGE_HEADER, b"x" * 2048),
            (DLQ_ORIGINAL_TOPIC_HEADER, b"jobs"),
            (DLQ_ORIGINAL_PARTITION_HEADER, b"3"),
            (DLQ_ORIGINAL_OFFSET_HEADER, b"42"),
            ("original_key_size", b"5000"),
            ("original_size", b"900001"),
        ],
    )
    assert len(letter.key) + len(letter.value or b"") < 1_000_000


def test_a_dead_letter_that_fits_is_the_record_as_it_came() -> None:
    refused = Record("jobs", 0, 7, None, b"not json", [])
    error = ModelTrainerError(ModelTrainerErrorCode.COMMAND_UNDECODABLE, "undecodable")
    letter = record(DeadLetter(refused, error), BASE)
    assert (letter.topic, letter.key, letter.value) == ("dlq", b"", b"not json")
    assert [name for name, _ in letter.headers] == [
        DLQ_ERROR_CODE_HEADER,
        DLQ_ERROR_MESSAGE_HEADER,
        DLQ_ORIGINAL_TOPIC_HEADER,
        DLQ_ORIGINAL_PARTITION_HEADER,
        DLQ_ORIGINAL_OFFSET_HEADER,
    ]


def test_a_forwarded_command_says_where_it_was_read_and_for_which_tenant() -> None:
    command = Record("jobs", 2, 9, b"a", b"{}", [("x", b"1"), (FORWARDED_TENANT, b"forged")])
    moved = record(Forward(command, TP("jobs.bob", 1), "alice"), BASE)
    assert moved == Outgoing(
        "jobs.bob",
        b"a",
        b"{}",
        [("x", b"1"), (FORWARDED_FROM, b"2:9"), (FORWARDED_TENANT, b"alice")],
        partition=1,
    )
    home = record(Forward(command, TP("jobs", 0), None), BASE)
    assert (home.partition, home.headers) == (0, [("x", b"1"), (FORWARDED_FROM, b"2:9")])


def test_a_transaction_keeps_the_order_the_book_decided() -> None:
    event, known = completed("a"), state("a")
    publish = Publish(TP("jobs", 0), (event, known, Tombstone("b")), {})
    assert publish.events == (event,)
    assert [(r.topic, r.key) for r in records(publish, BASE)] == [
        ("events", b"a"),
        ("state", b"a"),
        ("state", b"b"),
    ]
