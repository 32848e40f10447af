"""The book's share of the service-wide limits: a job without a timeout_s gets the service's
default one, and a command whose key is too large still gets a dead letter that fits."""

from __future__ import annotations

import dataclasses

from model_trainer.book.book import JobBook
from model_trainer.book.effects import Kill, Publish, Run
from model_trainer.book.records import TP
from model_trainer.shell.wire import DEAD_LETTER_MAX_BYTES, DEAD_LETTER_MAX_KEY_BYTES
from model_trainer_contracts import FailedEventV1, ModelTrainerErrorCode

from tests.runtime.book_helpers import (
    PARTITIONS,
    TOPIC,
    policy,
    published,
    record,
    records_of,
    refuse_bad,
    submit,
)


def _book(default_timeout_s: float | None) -> JobBook:
    rules = dataclasses.replace(policy(), default_timeout_s=default_timeout_s)
    book = JobBook(rules, refuse_bad)
    book.assign([TP(TOPIC, p) for p in range(PARTITIONS)])
    return book


def test_a_job_without_a_timeout_gets_the_default_and_times_out_with_it() -> None:
    book = _book(default_timeout_s=10)
    (run,) = [e for e in book.command(record(submit("a"), 0), now=0) if isinstance(e, Run)]
    assert run.order.deadline == 10
    effects = book.tick(now=13)
    assert Kill("a", 1) in effects
    (event,) = published(effects)
    assert isinstance(event, FailedEventV1)
    assert event.code is ModelTrainerErrorCode.TRAINING_TIMEOUT
    assert "timeout of 10" in event.message

    own = _book(default_timeout_s=10)
    effects = own.command(record(submit("b", timeout_s=50), 0), now=0)
    assert [e.order.deadline for e in effects if isinstance(e, Run)] == [50]
    none = _book(default_timeout_s=None)
    effects = none.command(record(submit("c"), 0), now=0)
    assert [e.order.deadline for e in effects if isinstance(e, Run)] == [None]


def test_a_huge_key_is_cut_so_the_dead_letter_fits() -> None:
    book = _book(default_timeout_s=None)
    key = b"k" * 160_000
    value = b"{" + b" " * (DEAD_LETTER_MAX_BYTES + 10)
    effects = book.command(record(value, 0, key=key), now=0)
    (dead,) = [
        r for e in effects if isinstance(e, Publish) for r in records_of(e) if r.topic == "dlq"
    ]
    headers = dict(dead.headers)
    assert dead.key == key[:DEAD_LETTER_MAX_KEY_BYTES]
    assert headers["original_key_size"] == b"160000"
    assert headers["error_code"] == b"COMMAND_TOO_LARGE"
    size = len(dead.key or b"") + len(dead.value or b"")
    size += sum(len(k) + len(v) for k, v in dead.headers)
    assert size < 1_000_000  # Kafka's default record limit
