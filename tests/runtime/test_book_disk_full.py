"""A run that meets a full disk (DISK_FULL) is handed back, not ended: no terminal event (the
one that would release its checkpoints), no failure counted, the job waits
``disk_full_retry_s`` in the queue while other jobs run, then runs again."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from model_trainer.book.book import JobBook
from model_trainer.book.effects import Run
from model_trainer.book.records import TP
from model_trainer_contracts import (
    FailedEventV1,
    JobStatus,
    ModelTrainerErrorCode,
    QueuedEventV1,
)

from .book_helpers import (
    TOPIC,
    cancel,
    commits,
    completed,
    is_terminal,
    policy,
    published,
    record,
    refuse_bad,
    states,
    submit,
)

C = ModelTrainerErrorCode


def _book() -> JobBook:
    book = JobBook(dataclasses.replace(policy(slots=1), disk_full_retry_s=30.0), refuse_bad)
    book.assign([TP(TOPIC, 0)])
    return book


def _disk_full(job_id: str, attempt: int) -> FailedEventV1:
    return FailedEventV1(
        job_id=job_id,
        user_id=7,
        seq=0,
        attempt=attempt,
        code=C.DISK_FULL,
        message="the disk is full",
        retryable=True,
        http_status=507,
        stage="train",
    )


def _started(effects: Sequence[object]) -> list[tuple[str, int]]:
    return [(e.job_id, e.order.attempt) for e in effects if isinstance(e, Run)]


def test_a_full_disk_hands_the_job_back_to_wait_then_resume() -> None:
    book = _book()
    assert _started(book.command(record(submit("a"), 0), now=0)) == [("a", 1)]
    book.command(record(submit("b"), 1), now=0)

    back = book.ended("a", 1, _disk_full("a", 1), now=10)
    (queued,) = published(back)  # and no terminal event
    assert isinstance(queued, QueuedEventV1)
    assert (queued.reason, queued.attempt) == ("retry", 2)
    assert [(s.job_id, s.status, s.failures) for s in states(back)] == [
        ("a", JobStatus.QUEUED, 0),
        ("b", JobStatus.RUNNING, 0),
    ]
    assert commits(back) == {}  # the submit stays uncommitted: a restart still runs it
    # While "a" waits for space, the next job takes the free worker.
    assert _started(back) == [("b", 1)]
    assert _started(book.ended("b", 1, completed("b"), now=11)) == []
    assert _started(book.tick(now=39.9)) == []
    assert _started(book.tick(now=40.0)) == [("a", 2)]
    (done,) = published(book.ended("a", 2, completed("a"), now=41))
    assert is_terminal(done)


def test_a_cancel_still_ends_a_job_waiting_for_space() -> None:
    book = _book()
    book.command(record(submit("a"), 0), now=0)
    book.ended("a", 1, _disk_full("a", 1), now=1)
    ended = published(book.command(record(cancel("a"), 1), now=2))
    assert [(type(e).__name__, getattr(e, "code", None)) for e in ended] == [
        ("FailedEventV1", C.TRAINING_CANCELLED)
    ]


def test_a_run_past_its_deadline_still_times_out_on_a_full_disk() -> None:
    book = _book()
    book.command(record(submit("a", timeout_s=5.0), 0), now=0)
    (event,) = published(book.ended("a", 1, _disk_full("a", 1), now=6))
    assert isinstance(event, FailedEventV1)
    assert event.code is C.TRAINING_TIMEOUT
