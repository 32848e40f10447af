"""The book's part in fencing and in surviving any command: misplaced commands forwarded to
their job's partition, admission that raises anything, a command refused unhandled, held
progress before a requeue, tombstones only past the submit's commit, dead letters that fit."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import pytest
from model_trainer.book.book import JobBook
from model_trainer.book.effects import FORWARDED_FROM, Publish, Run
from model_trainer.book.records import TP, Record
from model_trainer.shell.wire import Outgoing
from model_trainer_contracts import (
    CompletedEventV1,
    FailedEventV1,
    JobStatus,
    ModelTrainerError,
    ModelTrainerErrorCode,
    ProgressEventV1,
    QueuedEventV1,
    SubmitJobV1,
    encode,
)

from .book_helpers import (
    TOPIC,
    cancel,
    commits,
    completed,
    policy,
    progress,
    published,
    record,
    records_of,
    refuse_bad,
    states,
    submit,
)

C = ModelTrainerErrorCode
PARTITIONS = [TP(TOPIC, p) for p in range(3)]


def crc32(key: bytes, count: int) -> int:
    return zlib.crc32(key) % count


def book_of_three() -> JobBook:
    book = JobBook(policy(), refuse_bad, partitioner=crc32, partition_count=3)
    book.assign(PARTITIONS, dict.fromkeys(PARTITIONS, 0))
    return book


def outgoing(effects: Sequence[object], topic: str) -> list[Outgoing]:
    return [r for e in effects if isinstance(e, Publish) for r in records_of(e) if r.topic == topic]


def test_a_misplaced_submit_and_cancel_are_forwarded_to_the_jobs_partition() -> None:
    book = book_of_three()
    assert crc32(b"g", 3) == 1
    sent = book.command(record(submit("g"), 0, partition=0), now=0)
    assert [(type(e).__name__, e.via) for e in sent if isinstance(e, Publish)] == [
        ("Publish", PARTITIONS[0])
    ]
    [moved] = outgoing(sent, TOPIC)
    assert (moved.partition, moved.key, moved.value) == (1, b"g", encode(submit("g")))
    assert moved.headers == [(FORWARDED_FROM, b"0:0")]
    assert commits(sent) == {PARTITIONS[0]: 1}  # settled here in the same transaction
    assert published(sent) == []  # no event: only the job's partition numbers its events
    assert book.jobs == {}
    assert not [e for e in sent if isinstance(e, Run)]
    stop = book.command(record(cancel("g"), 1, partition=2), now=1)
    [moved_cancel] = outgoing(stop, TOPIC)
    assert (moved_cancel.partition, moved_cancel.headers) == (1, [(FORWARDED_FROM, b"2:1")])
    assert commits(stop) == {PARTITIONS[2]: 2}
    # Where it lands, it is acted on as any command on its partition.
    arrived = Record(TOPIC, 1, 0, b"g", moved.value or b"", list(moved.headers))
    assert [e.job_id for e in book.command(arrived, now=2) if isinstance(e, Run)] == ["g"]


def test_a_running_jobs_partition_wins_over_the_partitioner() -> None:
    book = book_of_three()
    book.partition_count = 0  # unknown at first: the job lives where it came
    book.command(record(submit("g"), 0, partition=0), now=0)
    book.partition_count = 3  # now crc32 says 1, but the job is on 0
    again = book.command(record(cancel("g"), 0, partition=1), now=1)
    [moved] = outgoing(again, TOPIC)
    assert moved.partition == 0


def test_a_second_miss_is_dead_lettered_job_on_other_partition() -> None:
    book = book_of_three()
    value = encode(submit("g"))
    twice = Record(TOPIC, 2, 5, b"g", value, [(FORWARDED_FROM, b"0:3")])
    out = book.command(twice, now=0)
    [letter] = outgoing(out, "dlq")
    assert dict(letter.headers)["error_code"] == b"JOB_ON_OTHER_PARTITION"
    assert letter.value == value
    assert outgoing(out, TOPIC) == []  # never forwarded in a loop
    assert published(out) == []
    assert commits(out) == {PARTITIONS[2]: 6}
    assert book.jobs == {}


@pytest.mark.parametrize(
    "raised",
    [
        OSError(36, "File name too long"),
        ValueError("embedded null byte"),
        RuntimeError("a bug in admission"),
    ],
)
def test_admission_raising_anything_is_a_typed_refusal_and_the_next_job_runs(
    raised: Exception,
) -> None:
    book = JobBook(policy(), refuse_bad)
    book.assign([PARTITIONS[0]])

    def broken(_spec: SubmitJobV1) -> None:
        raise raised

    out = book.command(record(submit("a"), 0), now=0, admit=broken)
    [failed] = published(out)
    assert isinstance(failed, FailedEventV1)
    assert (failed.code, failed.seq) == (C.INTERNAL_ERROR, 0)
    assert failed.details["exception"] == type(raised).__name__
    assert "command_rejected" not in failed.details  # the job ended: its one terminal event
    assert [s.status for s in states(out)] == [JobStatus.FAILED]
    assert commits(out) == {PARTITIONS[0]: 1}
    assert not [e for e in out if isinstance(e, Run)]
    following = book.command(record(submit("b"), 1), now=1)
    assert [e.job_id for e in following if isinstance(e, Run)] == ["b"]


def test_a_typed_refusal_from_admission_keeps_its_code() -> None:
    book = JobBook(policy(), refuse_bad)
    book.assign([PARTITIONS[0]])
    out = book.command(record(submit("bad-a"), 0), now=0)
    [failed] = published(out)
    assert isinstance(failed, FailedEventV1)
    assert failed.code == C.INVALID_MODEL_SIZE


def test_a_refused_command_is_dead_lettered_unhandled_and_the_next_one_runs() -> None:
    book = JobBook(policy(), refuse_bad)
    book.assign([PARTITIONS[0]])
    crashed = ModelTrainerError(C.COMMAND_CRASHED, "the service died handling it")
    out = book.refuse(record(submit("a"), 0), crashed, now=0)
    [letter] = outgoing(out, "dlq")
    assert dict(letter.headers)["error_code"] == b"COMMAND_CRASHED"
    assert dict(letter.headers)["original_offset"] == b"0"
    assert published(out) == []
    assert commits(out) == {PARTITIONS[0]: 1}
    assert book.jobs == {}
    assert [e.job_id for e in book.command(record(submit("b"), 1), now=1) if isinstance(e, Run)]


def test_a_retried_jobs_held_progress_goes_out_before_its_queued_event() -> None:
    book = JobBook(policy(max_progress_per_s=1.0, state_every_s=30.0), refuse_bad)
    book.assign([PARTITIONS[0]])
    out = book.command(record(submit("a"), 0), now=0)
    out += book.progress("a", 1, progress("a", 1), now=0.1)
    out += book.progress("a", 1, progress("a", 2), now=0.2)  # held: under the rate
    retried = book.died("a", 1, -9, now=0.3)
    shown = published(retried)
    assert [type(e).__name__ for e in shown] == ["ProgressEventV1", "QueuedEventV1"]
    assert isinstance(shown[0], ProgressEventV1)
    assert shown[0].step == 2
    [queued_state, *_] = states(retried)
    assert queued_state.status is JobStatus.QUEUED
    assert queued_state.last_seq == shown[1].seq  # covers the held progress
    assert published(book.tick(now=10)) == []  # nothing held is left to go out unstated
    # A crash now: the next book reads only the state (QUEUED: no events read-back).
    after = JobBook(policy(), refuse_bad)
    after.load(queued_state)
    assert after.unsure([PARTITIONS[0]]) == {}
    after.assign([PARTITIONS[0]])
    again = after.command(record(submit("a"), 0), now=20)
    everything = published(out) + shown + published(again)
    assert [e.seq for e in everything] == list(range(len(everything)))


def test_a_state_is_not_tombstoned_while_its_submit_waits_behind_a_longer_job() -> None:
    book = JobBook(policy(slots=2, state_retention_s=100.0), refuse_bad)
    book.assign([PARTITIONS[0]], {PARTITIONS[0]: 0})
    book.command(record(submit("long"), 0), now=0)
    book.command(record(submit("short"), 1), now=0)
    ended = book.ended("short", 1, completed("short"), now=1)
    assert commits(ended) == {}  # offset 1 waits behind "long" at offset 0

    def tombstones(now: float) -> list[bytes]:
        return [r.key for r in outgoing(book.tick(now), "state") if r.value is None]

    assert tombstones(now=500) == []  # past the retention, but a restart would run it again
    assert "short" in book.states
    done = book.ended("long", 1, completed("long"), now=501)
    assert commits(done) == {PARTITIONS[0]: 2}
    assert tombstones(now=600) == [b"short"]  # "long" ended 99 s ago
    assert tombstones(now=700) == [b"long"]


def test_a_state_committed_before_the_assignment_is_tombstoned_after_the_retention() -> None:
    book = JobBook(policy(state_retention_s=100.0), refuse_bad)
    out = book.command(record(submit("a"), 0), now=0)  # as before the partition was ours
    out += book.ended("a", 1, completed("a"), now=1)
    for state in states(out):  # committed, and read back from the state topic
        book.load(state)
    book.release([PARTITIONS[0]])
    book.assign([PARTITIONS[0]], {PARTITIONS[0]: 1})  # the last owner committed its submit
    assert [r.key for r in outgoing(book.tick(now=200), "state") if r.value is None] == [b"a"]


def test_the_dead_letter_of_a_900_kb_key_fits_the_record_limit() -> None:
    book = JobBook(policy(), refuse_bad)
    book.assign([PARTITIONS[0]])
    key = b"k" * 900_000
    out = book.command(record(submit("a"), 0, key=key), now=0)
    [letter] = outgoing(out, "dlq")
    headers = dict(letter.headers)
    assert headers["error_code"] == b"COMMAND_INVALID"
    assert letter.key == key[:1024]
    assert headers["original_key_size"] == b"900000"
    size = (
        len(letter.key)
        + len(letter.value or b"")
        + sum(len(k) + len(v) for k, v in headers.items())
    )
    assert size < 1_000_000
    assert published(out) == []  # a wrong key gets no event: another partition may own it
    assert commits(out) == {PARTITIONS[0]: 1}


def test_a_completed_job_forwarded_twice_still_ends_once() -> None:
    """A misplaced duplicate of a finished job reaches its partition as a duplicate."""
    book = book_of_three()
    book.command(record(submit("g"), 0, partition=1), now=0)
    end = book.ended("g", 1, completed("g"), now=1)
    assert [type(e) for e in published(end)] == [CompletedEventV1]
    [moved] = outgoing(book.command(record(submit("g"), 0, partition=0), now=2), TOPIC)
    arrived = Record(TOPIC, 1, 1, b"g", moved.value or b"", list(moved.headers))
    again = book.command(arrived, now=3)
    assert published(again) == []
    assert not [e for e in again if isinstance(e, Run)]
    assert not [e for e in again if isinstance(e, QueuedEventV1)]
