"""The book's less travelled paths, one decision each: what the shell asks before admitting,
what the pool may say in an unusual order, and a partition taken back before its run died."""

from __future__ import annotations

from collections.abc import Sequence

from model_trainer.book.effects import Kill, Run, Stop, request_digest
from model_trainer.book.offsets import OffsetTracker
from model_trainer.book.records import TP
from model_trainer.core.stop import StopReason
from model_trainer.pool.protocol import JobEvent, JobPreempted, RunStarted, WorkerDied
from model_trainer_contracts import (
    ConfigEventV1,
    FailedEventV1,
    JobStateV1,
    JobStatus,
    ModelTrainerErrorCode,
    QueuedEventV1,
    encode,
)
from model_trainer_contracts.examples import CONFIG

from .book_helpers import (
    TOPIC,
    cancel,
    commits,
    completed,
    new_book,
    progress,
    published,
    record,
    submit,
    user_failure,
)

P0 = TP(TOPIC, 0)
C = ModelTrainerErrorCode


def _runs(effects: Sequence[object]) -> list[str]:
    return [e.job_id for e in effects if isinstance(e, Run)]


def _home(job_id: str) -> int:
    return 0 if job_id.startswith("a") else 1


def test_admits_says_which_records_command_would_queue_without_queueing_them() -> None:
    book = new_book()
    book.partitioner = lambda key, count: _home(key.decode())
    book.partition_count = 2
    fresh = submit("a1")
    assert book.admits(record(fresh, 0)) == fresh
    assert book.jobs == {}  # a question, not a decision
    assert book.admits(record(b"{not json", 1, key=b"a1")) is None
    assert book.admits(record(cancel("a1"), 2)) is None
    assert book.admits(record(fresh, 3, key=b"someone-else")) is None
    assert book.admits(record(submit("b1"), 4, partition=0)) is None  # its home is 1
    book.command(record(fresh, 5), now=0)
    assert book.admits(record(fresh, 6)) is None  # known already: a duplicate
    book.ended("a1", 1, completed("a1"), now=1)
    assert book.admits(record(fresh, 7)) is None  # ended: a duplicate
    running = JobStateV1(
        job_id="a2",
        status=JobStatus.RUNNING,
        request_digest=request_digest(submit("a2")),
        attempt=1,
        failures=0,
        last_seq=3,
    )
    book.load(running)  # another instance ran it: its submit is the job, resumed here
    assert book.admits(record(submit("a2"), 8)) == submit("a2")
    assert book.admits(record(submit("a2", steps=99), 9)) is None  # the id, another job


def test_a_timed_out_runs_death_after_its_kill_says_nothing_more() -> None:
    book = new_book(cancel_grace_s=3)
    book.command(record(submit("a", timeout_s=10), 0), now=0)
    (event,) = published(book.tick(now=13))
    assert isinstance(event, FailedEventV1)
    assert event.code is C.TRAINING_TIMEOUT
    assert book.free_slots() == 0  # the killed worker still holds its slot
    assert published(book.died("a", 1, -9, now=14)) == []
    assert book.free_slots() == 1


def test_a_partition_lost_without_a_revoke_drops_its_queue_and_kills_its_run() -> None:
    book = new_book(slots=1)
    book.command(record(submit("a"), 0), now=0)
    book.command(record(submit("b"), 1), now=0)
    assert book.release([P0]) == [Kill("a", 1)]
    assert book.queued() == 0
    assert book.jobs == {}
    assert published(book.died("a", 1, -9, now=1)) == []


def test_running_lists_the_jobs_with_a_run_not_the_queue() -> None:
    book = new_book(slots=1)
    book.command(record(submit("a"), 0), now=0)
    book.command(record(submit("b"), 1), now=0)
    assert book.running() == ["a"]
    assert book.queued() == 1


def test_the_pools_reports_of_a_start_a_death_and_a_preemption_are_decided_like_the_calls() -> None:
    book = new_book(max_attempts=2, stall_timeout_s=5)
    book.command(record(submit("a"), 0), now=0)
    assert book.report(RunStarted("a", 1), now=100) == []
    assert book.tick(now=104) == []  # the stall clock started at the run's start, not at 0
    retried = book.report(WorkerDied("a", 1, -9), now=105)
    assert _runs(retried) == ["a"]
    again = book.report(JobPreempted("a", 2, step=3), now=106)
    assert _runs(again) == ["a"]  # still ours: it runs again, first in the queue
    (queued,) = published(again)
    assert isinstance(queued, QueuedEventV1)
    assert (queued.reason, queued.position) == ("preempted", 0)


def test_a_config_event_is_published_with_the_runs_numbering() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    config = CONFIG.model_copy(update={"job_id": "a", "user_id": 7})
    shown = book.report(JobEvent("a", 1, encode(config)), now=1)
    (event,) = published(shown)
    assert isinstance(event, ConfigEventV1)
    assert (event.job_id, event.attempt) == ("a", 1)


def test_a_run_that_ends_with_a_progress_event_fails_the_job_as_internal() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    effects = book.ended("a", 1, progress("a", 3), now=1)
    (event,) = published(effects)
    assert isinstance(event, FailedEventV1)
    assert event.code is C.INTERNAL_ERROR
    assert "trainer.metrics.progress.v1" in event.message
    assert commits(effects) == {P0: 1}


def test_a_stale_preemption_changes_nothing() -> None:
    book = new_book(max_attempts=3)
    book.command(record(submit("a"), 0), now=0)
    book.died("a", 1, -9, now=1)  # attempt 2 runs now
    assert book.preempted("a", 1, step=5, now=2) == []
    assert book.running() == ["a"]


def test_a_cancelled_run_that_checkpoints_instead_of_ending_ends_cancelled() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    assert Stop("a", StopReason.CANCEL) in book.command(record(cancel("a"), 1), now=1)
    effects = book.preempted("a", 1, step=7, now=2)
    (event,) = published(effects)
    assert isinstance(event, FailedEventV1)
    assert event.code is C.TRAINING_CANCELLED
    assert _runs(effects) == []


def test_a_cancel_during_the_handback_sends_no_second_stop_and_ends_the_job_cancelled() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    assert book.revoke([P0], now=1) == [Stop("a", StopReason.SHUTDOWN)]
    answer = book.command(record(cancel("a"), 1), now=2)
    assert [e for e in answer if isinstance(e, Stop)] == []
    (event,) = published(book.preempted("a", 1, step=4, now=3))
    assert isinstance(event, FailedEventV1)
    assert event.code is C.TRAINING_CANCELLED


def test_a_job_taken_back_before_its_killed_run_died_waits_for_the_worker() -> None:
    book = new_book(slots=2, handback_grace_s=10)
    book.command(record(submit("a"), 0), now=0)
    book.revoke([P0], now=0)
    book.tick(now=10)  # killed: the slot stays taken until its death is reported
    book.release([P0])
    book.assign([P0])
    assert _runs(book.command(record(submit("a"), 0), now=11)) == []
    assert book.queued() == 1
    assert _runs(book.died("a", 1, -9, now=12)) == ["a"]


def test_a_redelivered_offset_is_one_unfinished_command() -> None:
    tracker = OffsetTracker()
    tp = TP(TOPIC, 0)
    assert tracker.oldest_unfinished(tp) is None
    tracker.add(tp, 4)
    tracker.add(tp, 4)  # the same record read again after a rebalance
    tracker.add(tp, 5)
    assert tracker.oldest_unfinished(tp) == 4
    assert tracker.unfinished() == 2
    assert tracker.finish(tp, 4) == 5
    assert tracker.oldest_unfinished(tp) == 5


def test_a_tick_kills_a_run_once_and_leaves_the_queue_alone() -> None:
    book = new_book(slots=1, cancel_grace_s=3)
    book.command(record(submit("a"), 0), now=0)
    book.command(record(submit("b"), 1), now=0)
    book.command(record(cancel("a"), 2), now=1)
    first = book.tick(now=4)
    assert [e for e in first if isinstance(e, Kill)] == [Kill("a", 1)]
    assert book.tick(now=5) == []  # killed already; b waits for the worker's slot
    assert book.queued() == 1
    assert _runs(book.died("a", 1, -9, now=6)) == ["b"]


def test_a_revoke_or_a_shutdown_sends_no_stop_to_a_run_already_stopping() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    book.command(record(cancel("a"), 1), now=1)  # Stop(CANCEL) went out
    assert book.revoke([P0], now=2) == []  # a cancelled job ends as cancelled
    other = new_book()
    other.command(record(submit("b"), 0), now=0)
    assert other.revoke([P0], now=1) == [Stop("b", StopReason.SHUTDOWN)]
    assert other.shutdown(now=2) == []  # handing back already


def test_a_cancelled_run_that_fails_otherwise_keeps_its_own_failure() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    book.command(record(cancel("a"), 1), now=1)
    (event,) = published(book.ended("a", 1, user_failure("a"), now=2))
    assert isinstance(event, FailedEventV1)
    assert (event.code, event.message) == (C.TRAINING_NAN_LOSS, "nan")


def test_a_full_disk_during_a_hand_back_leaves_the_job_to_the_next_owner() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    book.revoke([P0], now=1)
    full = FailedEventV1(
        job_id="a",
        user_id=7,
        seq=0,
        attempt=1,
        code=C.DISK_FULL,
        message="the disk is full",
        retryable=True,
        http_status=507,
        stage="train",
    )
    effects = book.ended("a", 1, full, now=2)
    assert published(effects) == []  # no terminal event: its checkpoints stay
    assert commits(effects) == {}  # its submit stays uncommitted for the next owner
    assert "a" not in book.jobs
