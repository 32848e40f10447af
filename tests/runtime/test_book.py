"""The job book's decisions, one by one: no broker, no workers, no torch."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from model_trainer.book.book import JobBook
from model_trainer.book.effects import Kill, Publish, Run, Stop
from model_trainer.book.records import TP
from model_trainer.core.stop import StopReason
from model_trainer.pool.protocol import JobEnded, JobEvent, RunStarted
from model_trainer_contracts import (
    FailedEventV1,
    JobStateV1,
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
    is_terminal,
    new_book,
    policy,
    progress,
    published,
    record,
    records_of,
    refuse_bad,
    states,
    submit,
    user_failure,
)

P0 = TP(TOPIC, 0)
C = ModelTrainerErrorCode


def runs(effects: Sequence[object]) -> list[Run]:
    return [e for e in effects if isinstance(e, Run)]


def test_accepted_job_is_queued_then_dispatched_and_its_events_numbered() -> None:
    book = new_book()
    effects = book.command(record(submit("a"), 0), now=0)
    assert [s.status for s in states(effects)] == [JobStatus.QUEUED, JobStatus.RUNNING]
    (queued,) = published(effects)
    assert isinstance(queued, QueuedEventV1)
    assert (queued.seq, queued.position, queued.reason, queued.attempt) == (0, 0, "submitted", 1)
    (run,) = runs(effects)
    assert run.order.attempt == 1
    out = book.progress("a", 1, progress("a", 1), now=1)
    out += book.progress("a", 1, progress("a", 2), now=2)
    out += book.ended("a", 1, completed("a"), now=3)
    assert [e.seq for e in published(out)] == [1, 2, 3]
    assert commits(out) == {P0: 1}  # committed only with the terminal event
    assert states(out)[-1].status is JobStatus.COMPLETED
    assert book.jobs == {}


def test_commit_never_passes_a_running_job() -> None:
    book = new_book(slots=2)
    book.command(record(submit("a"), 0), now=0)
    book.command(record(submit("b"), 1), now=0)
    assert commits(book.ended("b", 1, completed("b"), now=1)) == {}  # "a" still runs at 0
    assert commits(book.ended("a", 1, completed("a"), now=2)) == {P0: 2}


def test_refused_at_admission_ends_at_once_and_is_never_run() -> None:
    book = new_book()
    effects = book.command(record(submit("bad-1"), 0), now=0)
    assert runs(effects) == []
    (event,) = published(effects)
    assert isinstance(event, FailedEventV1)
    assert event.code is C.INVALID_MODEL_SIZE
    assert is_terminal(event)
    assert commits(effects) == {P0: 1}


def test_duplicate_is_settled_and_conflict_rejected_with_the_next_seq() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    assert published(book.command(record(submit("a"), 1), now=1)) == []  # duplicate
    conflict = book.command(record(submit("a", steps=99), 2), now=2)
    (rejection,) = published(conflict)
    assert isinstance(rejection, FailedEventV1)
    assert rejection.code is C.JOB_ID_CONFLICT
    assert rejection.details["command_rejected"] is True
    later = published(book.progress("a", 1, progress("a", 1), now=3))
    assert [rejection.seq, later[0].seq] == [1, 2]  # a rejection takes a seq of its own


def test_resubmit_of_an_ended_job_is_a_duplicate() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    book.ended("a", 1, completed("a"), now=1)
    again = book.command(record(submit("a"), 1), now=2)
    assert runs(again) == []
    assert published(again) == []
    assert commits(again) == {P0: 2}


def test_submit_on_a_wrong_key_is_dead_lettered_without_an_event() -> None:
    book = new_book()
    effects = book.command(record(submit("a"), 0, key=b"other"), now=0)
    assert runs(effects) == []
    assert published(effects) == []
    (dead,) = [r for e in effects if isinstance(e, Publish) for r in records_of(e)]
    assert dead.topic == "dlq"
    assert dict(dead.headers)["error_code"] == b"COMMAND_INVALID"
    assert commits(effects) == {P0: 1}


def test_undecodable_command_gets_a_dead_letter_and_a_numbered_rejection() -> None:
    book = new_book()
    effects = book.command(record(b'{"job_id": "x", "type": "nope"}', 0, key=b"x"), now=0)
    (rejection,) = published(effects)
    assert rejection.seq == 0
    assert states(effects)[0].status is JobStatus.REJECTED
    # a job submitted later under that id continues the numbering
    later = book.command(record(submit("x"), 1), now=1)
    assert [e.seq for e in published(later)] == [1]  # queued
    assert published(book.progress("x", 1, progress("x", 1), now=2))[0].seq == 2


def test_cancel_of_a_queued_job_ends_it_at_once() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    book.command(record(submit("b"), 1), now=0)  # waits: one slot
    effects = book.command(record(cancel("b"), 2), now=1)
    (event,) = published(effects)
    assert isinstance(event, FailedEventV1)
    assert event.code is C.TRAINING_CANCELLED
    assert "b" not in book.jobs


def test_cancel_of_a_running_job_stops_it_then_kills_it_after_the_grace() -> None:
    book = new_book(cancel_grace_s=3.0)
    book.command(record(submit("a"), 0), now=0)
    effects = book.command(record(cancel("a"), 1), now=10)
    assert Stop("a", StopReason.CANCEL) in effects
    assert book.tick(now=12.9) == []
    killed = book.tick(now=13)
    assert Kill("a", 1) in killed
    (event,) = published(killed)
    assert isinstance(event, FailedEventV1)
    assert event.code is C.TRAINING_CANCELLED  # answered at the kill, within the grace
    assert commits(killed) == {P0: 2}
    assert book.free_slots() == 0  # the worker is busy until its death is reported
    book.died("a", 1, -9, now=13.1)
    assert book.free_slots() == 1


def test_a_run_stopped_by_a_cancel_ends_with_the_cancels_reason() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    book.command(record(cancel("a"), 1), now=1)
    stopped = FailedEventV1(
        job_id="a",
        user_id=7,
        seq=0,
        code=C.TRAINING_CANCELLED,
        message="stopped at step 4 (cancel)",
        retryable=False,
        http_status=499,
        stage="train",
        details={"step": 4},
    )
    (event,) = published(book.ended("a", 1, stopped, now=2))
    assert isinstance(event, FailedEventV1)
    assert event.message == "cancelled: test (stopped at step 4 (cancel))"
    assert event.details == {"step": 4, "reason": "test"}


def test_cancel_is_not_lost_when_the_worker_dies() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    book.command(record(cancel("a"), 1), now=1)
    effects = book.died("a", 1, 1, now=2)
    assert runs(effects) == []
    (event,) = published(effects)
    assert isinstance(event, FailedEventV1)
    assert event.code is C.TRAINING_CANCELLED


def test_cancel_of_an_unknown_job_is_rejected() -> None:
    effects = new_book().command(record(cancel("ghost"), 0), now=0)
    (event,) = published(effects)
    assert isinstance(event, FailedEventV1)
    assert event.code is C.JOB_NOT_FOUND
    assert not is_terminal(event)


def test_worker_death_is_retried_then_fails_with_run_worker_died() -> None:
    book = new_book(max_attempts=2)
    book.command(record(submit("a"), 0), now=0)
    retry = book.died("a", 1, -9, now=1)
    (run,) = runs(retry)
    assert run.order.attempt == 2
    assert states(retry)[-1].failures == 1
    final = book.died("a", 2, -9, now=2)
    (event,) = published(final)
    assert isinstance(event, FailedEventV1)
    assert event.code is C.RUN_WORKER_DIED


def test_user_errors_are_never_retried() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    effects = book.ended("a", 1, user_failure("a"), now=1)
    assert runs(effects) == []
    (event,) = published(effects)
    assert is_terminal(event)


def test_resumes_do_not_spend_the_failure_budget() -> None:
    book = new_book(max_attempts=2)
    book.load(
        JobStateV1(
            job_id="a",
            status=JobStatus.RUNNING,
            request_digest="",
            attempt=3,
            failures=0,
            last_seq=7,
        )
    )
    # the digest is unknown ("" from a foreign record): the resubmit is taken as the job
    effects = book.command(record(submit("a"), 0), now=0)
    (run,) = runs(effects)
    assert run.order.attempt == 4  # runs keep counting across restarts
    assert [(e.seq, e.type) for e in published(effects)] == [(8, "trainer.job.queued.v1")]
    retry = book.died("a", 4, -9, now=1)
    assert runs(retry), "one death after resumes is retried"
    (requeued,) = published(retry)
    assert isinstance(requeued, QueuedEventV1)
    assert (requeued.seq, requeued.reason) == (9, "retry")
    assert published(book.progress("a", 5, progress("a", 1), now=2))[0].seq == 10


def test_silent_run_is_killed_retried_then_stalled() -> None:
    book = new_book(stall_timeout_s=60, max_attempts=2)
    book.command(record(submit("a"), 0), now=0)
    assert book.tick(now=100) == []  # no worker has the run yet: waiting is not stalling
    book.report(RunStarted("a", 1), now=100)
    book.progress("a", 1, progress("a", 1), now=130)
    assert book.tick(now=189) == []
    assert Kill("a", 1) in book.tick(now=190)
    retry = book.died("a", 1, -9, now=191)
    assert runs(retry)
    book.report(RunStarted("a", 2), now=191)
    assert Kill("a", 2) in book.tick(now=251)
    (event,) = published(book.died("a", 2, -9, now=252))
    assert isinstance(event, FailedEventV1)
    assert event.code is C.TRAINING_STALLED


def test_per_job_stall_timeout_wins() -> None:
    book = new_book(stall_timeout_s=600)
    spec = submit("a").model_copy(update={"stall_timeout_s": 5.0})
    book.command(record(spec, 0), now=0)
    book.report(RunStarted("a", 1), now=1)
    assert Kill("a", 1) in book.tick(now=6)


def test_run_past_its_deadline_and_grace_is_killed_with_timeout() -> None:
    book = new_book(cancel_grace_s=3)
    (run,) = runs(book.command(record(submit("a", timeout_s=10), 0), now=0))
    assert run.order.deadline == 10  # the worker stops itself then; the book kills after
    assert book.tick(now=12.9) == []
    effects = book.tick(now=13)
    assert Kill("a", 1) in effects
    (event,) = published(effects)
    assert isinstance(event, FailedEventV1)
    assert event.code is C.TRAINING_TIMEOUT


def test_revoke_hands_back_without_events_and_never_commits_past_the_job() -> None:
    book = new_book(handback_grace_s=10)
    book.command(record(submit("a"), 0), now=0)
    book.command(record(submit("q"), 1), now=0)  # queued behind "a"
    effects = book.revoke([P0], now=5)
    assert effects == [Stop("a", StopReason.SHUTDOWN)]
    assert book.handing_back([P0])
    assert book.queued() == 0
    over = book.preempted("a", 1, step=40, now=6)
    assert published(over) == []
    assert commits(over) == {}
    assert not book.handing_back([P0])
    book.release([P0])
    assert book.jobs == {}


def test_revoked_run_that_does_not_stop_is_killed_and_its_late_words_ignored() -> None:
    book = new_book(handback_grace_s=10)
    book.command(record(submit("a"), 0), now=0)
    book.revoke([P0], now=0)
    assert Kill("a", 1) in book.tick(now=10)
    assert book.release([P0]) == []  # the rebalance cannot wait for ever; killed already
    assert published(book.ended("a", 1, completed("a"), now=11)) == []
    assert book.free_slots() == 1


def test_job_that_ends_during_the_handback_is_published_and_committed() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    book.revoke([P0], now=0)
    effects = book.ended("a", 1, completed("a"), now=1)
    assert [e.type for e in published(effects)] == ["trainer.metrics.completed.v1"]
    assert commits(effects) == {P0: 1}


def test_shutdown_stops_everything_and_dispatches_nothing() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    book.command(record(submit("b"), 1), now=0)
    assert book.shutdown(now=0) == [Stop("a", StopReason.SHUTDOWN)]
    assert runs(book.preempted("a", 1, step=3, now=1)) == []
    assert not book.handing_back()


def test_stale_messages_of_an_earlier_run_are_ignored() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    book.died("a", 1, -9, now=1)  # retried as run 2
    assert published(book.progress("a", 1, progress("a", 5), now=2)) == []
    assert published(book.ended("a", 1, completed("a"), now=3)) == []
    assert "a" in book.jobs


def test_state_replay_never_steps_a_job_back_from_terminal() -> None:
    book = new_book()
    done = JobStateV1(job_id="a", status=JobStatus.COMPLETED, request_digest="d", last_seq=4)
    book.load(done)
    book.load(done.model_copy(update={"status": JobStatus.RUNNING, "last_seq": 2}))
    assert book.states["a"].status is JobStatus.COMPLETED


def _of_user(job_id: str, user: int, priority: int = 0) -> SubmitJobV1:
    return submit(job_id).model_copy(update={"user_id": user, "priority": priority})


def _started(effects: Sequence[object]) -> list[str]:
    return [r.job_id for r in runs(effects)]


def test_users_take_turns_so_a_flood_does_not_starve_another_user() -> None:
    book = new_book(slots=1)
    order: list[str] = []
    offset = 0
    for i in range(20):
        order += _started(book.command(record(_of_user(f"a{i}", 1), offset), now=0))
        offset += 1
    for i in range(2):
        order += _started(book.command(record(_of_user(f"b{i}", 2), offset), now=0))
        offset += 1
    while len(order) < 22:
        order += _started(book.ended(order[-1], 1, completed(order[-1]), now=1))
    assert order.index("b0") < order.index("a2")
    assert order[:5] == ["a0", "b0", "a1", "b1", "a2"]


def test_priority_orders_a_users_own_jobs() -> None:
    book = new_book(slots=1)
    book.command(record(_of_user("first", 1), 0), now=0)
    book.command(record(_of_user("low", 1, priority=-5), 1), now=0)
    book.command(record(_of_user("high", 1, priority=9), 2), now=0)
    assert _started(book.ended("first", 1, completed("first"), now=1)) == ["high"]


def test_running_jobs_per_user_are_capped() -> None:
    book = JobBook(policy(slots=3, max_running_per_user=1), refuse_bad)
    book.assign([P0])
    started = _started(book.command(record(_of_user("a0", 1), 0), now=0))
    started += _started(book.command(record(_of_user("a1", 1), 1), now=0))
    started += _started(book.command(record(_of_user("b0", 2), 2), now=0))
    assert started == ["a0", "b0"]  # a1 waits although a worker is free


def test_progress_is_coalesced_but_evaluations_and_the_end_are_not() -> None:
    book = JobBook(policy(max_progress_per_s=2.0), refuse_bad)
    book.assign([P0])
    book.command(record(submit("a"), 0), now=0)
    out: list[object] = []
    for step in range(1, 11):  # ten progress events within one second
        out += book.progress("a", 1, progress("a", step), now=0.1 * step)
    evaluated = progress("a", 11).model_copy(update={"val_loss": 1.5})
    out += book.progress("a", 1, evaluated, now=1.05)
    out += book.progress("a", 1, progress("a", 12), now=1.06)  # held
    out += book.tick(now=1.6)  # released: half a second since the evaluation
    out += book.progress("a", 1, progress("a", 13), now=1.7)  # held
    out += book.ended("a", 1, completed("a"), now=1.8)  # goes out before the end
    steps = [(e.step, e.val_loss) for e in published(out) if isinstance(e, ProgressEventV1)]
    assert steps == [(1, None), (6, None), (11, 1.5), (12, None), (13, None)]
    assert [e.seq for e in published(out)] == list(range(1, 7))


def test_report_decodes_what_the_pool_says() -> None:
    book = new_book()
    book.command(record(submit("a"), 0), now=0)
    shown = book.report(JobEvent("a", 1, encode(progress("a", 1))), now=1)
    assert [e.type for e in published(shown)] == ["trainer.metrics.progress.v1"]
    assert book.report(JobEvent("a", 1, b"not json"), now=2) == []
    ended = book.report(JobEnded("a", 1, encode(completed("a"))), now=3)
    assert [e.type for e in published(ended)] == ["trainer.metrics.completed.v1"]


def test_ended_jobs_states_are_tombstoned_after_the_retention() -> None:
    book = JobBook(policy(slots=2, state_retention_s=100.0), refuse_bad)
    book.assign([P0])
    book.command(record(submit("old"), 0), now=0)
    book.ended("old", 1, completed("old"), now=10)
    book.command(record(submit("new"), 1), now=50)
    book.ended("new", 1, completed("new"), now=60)
    book.command(record(submit("running"), 2), now=60)
    gone = [
        (r.key, r.value)
        for e in book.tick(now=140)
        if isinstance(e, Publish)
        for r in records_of(e)
        if r.topic == "state"
    ]
    assert gone == [(b"old", None)]  # "new" ended 80 s ago; "running" has not ended
    assert "old" not in book.states
    again = book.command(record(submit("old"), 3), now=141)  # a new job after the retention
    assert runs(again)


def test_a_rejection_for_a_huge_field_name_is_published_truncated() -> None:
    book = JobBook(dataclasses.replace(policy(), max_command_bytes=1_000_000), refuse_bad)
    book.assign([P0])
    body = encode(submit("huge")).replace(b'"user_id"', b'"' + b"x" * 600_000 + b'":1,"user_id"')
    effects = book.command(record(body, 0, key=b"huge"), now=0)
    (rejection,) = [
        r for e in effects if isinstance(e, Publish) for r in records_of(e) if r.topic == "events"
    ]
    assert rejection.value is not None
    assert len(rejection.value) < 100_000  # the dead letter keeps the bytes; the event is cut
    (event,) = published(effects)
    assert isinstance(event, FailedEventV1)
    assert event.code is C.COMMAND_INVALID
    assert "truncated_from_bytes" in event.details
    assert commits(effects) == {P0: 1}


def test_a_tombstone_read_back_forgets_an_ended_job_but_never_an_active_one() -> None:
    book = new_book()
    book.load(JobStateV1(job_id="gone", status=JobStatus.COMPLETED, request_digest="d"))
    book.command(record(submit("live"), 0), now=0)
    book.forget("gone")
    book.forget("live")
    assert "gone" not in book.states
    assert "live" in book.states


def test_progress_writes_state_at_most_every_interval_and_a_new_owner_recovers_the_seq() -> None:
    book = JobBook(policy(state_every_s=30.0), refuse_bad)
    book.assign([P0])
    first = book.command(record(submit("a"), 0), now=0)  # queued, then running: transitions
    out: list[object] = []
    for step in range(1, 8):
        out += book.progress("a", 1, progress("a", step), now=10.0 * step)
    assert [s.last_seq for s in states(out)] == [3, 6]  # at 30 s and 60 s, not with every event
    assert [e.seq for e in published(out)] == list(range(1, 8))
    # kill -9 here: a new owner replays the state topic, whose last record says seq 6
    topic = {s.job_id: s for s in states(first + out)}
    successor = JobBook(policy(state_every_s=30.0), refuse_bad)
    for state in topic.values():
        successor.load(state)
    assert successor.unsure([P0]) == {"a": 60.0}
    assert successor.unsure([TP(TOPIC, 1)]) == {}
    successor.published({"a": 7, "elsewhere": 3})  # what the events topic holds since 60 s
    successor.assign([P0])
    resumed = successor.command(record(submit("a"), 0), now=100)
    (queued,) = published(resumed)
    assert (queued.seq, queued.attempt) == (8, 2)  # no gap, no reuse
    # a recovery never steps a seq back, and a job running here is not in doubt
    successor.published({"a": 2})
    assert successor.states["a"].last_seq == 8
    assert successor.unsure([P0]) == {}


def test_progress_is_held_while_the_publisher_is_behind() -> None:
    behind = True
    book = JobBook(policy(), refuse_bad, lambda: behind)
    book.assign([P0])
    book.command(record(submit("a"), 0), now=0)
    out: list[object] = []
    for step in range(1, 1001):  # an outage: a thousand progress reports, none goes out
        out += book.progress("a", 1, progress("a", step), now=float(step))
        if step % 100 == 0:  # evaluations are held too (the latest wins), apart from steps
            evaluated = progress("a", step).model_copy(update={"val_loss": 2.0 - step / 1000})
            out += book.progress("a", 1, evaluated, now=float(step))
    out += book.progress("a", 1, progress("a", 1002), now=1002)
    out += book.tick(now=1003)
    assert [e for e in published(out) if isinstance(e, ProgressEventV1)] == []
    behind = False  # the broker is back: the last evaluation, then the latest step, go out
    shown = [e for e in published(book.tick(now=1004)) if isinstance(e, ProgressEventV1)]
    assert [(e.step, e.val_loss, e.seq) for e in shown] == [(1000, 1.0, 1), (1002, None, 2)]


def test_evaluations_are_coalesced_under_the_rate_and_the_last_one_always_goes_out() -> None:
    book = JobBook(policy(max_progress_per_s=1.0), refuse_bad)
    book.assign([P0])
    book.command(record(submit("a"), 0), now=0)
    out: list[object] = []
    for step in range(1, 301):  # eval_every: 1 at a hundred steps a second
        evaluated = progress("a", step).model_copy(update={"val_loss": 3.0 - step / 100})
        out += book.progress("a", 1, evaluated, now=step / 100)
    out += book.ended("a", 1, completed("a"), now=3.01)
    shown = [e for e in published(out) if isinstance(e, ProgressEventV1)]
    assert [e.step for e in shown] == [1, 101, 202, 300]  # 2.02 - 1.01 is the first >= 1 s
    assert [e.seq for e in published(out)] == list(range(1, len(published(out)) + 1))


def test_a_new_owner_tombstones_its_partitions_expired_states_at_its_next_tick() -> None:
    book = JobBook(policy(state_retention_s=100.0), refuse_bad)
    old = JobStateV1(job_id="old", status=JobStatus.COMPLETED, request_digest="d", partition=0)
    book.load(old.model_copy(update={"updated_at": old.updated_at.replace(year=2000)}))
    now = old.updated_at.timestamp()
    assert book.tick(now) == []  # no partition owned yet; the expiry clock starts
    book.assign([P0])  # a minute has not passed, but the partition is new here
    tombstones = [
        r.key for e in book.tick(now + 1) if isinstance(e, Publish) for r in records_of(e)
    ]
    assert tombstones == [b"old"]


def test_a_partition_taken_back_forgets_what_its_dropped_transactions_said() -> None:
    """Its transactions dropped (fenced, or the hand-back's flush timed out), a partition the
    group gives back to this instance is taken up from what the state topic committed, never
    from the book's own uncommitted writes: the job is answered again, from seq 0."""
    book = JobBook(policy(), refuse_bad)
    book.assign([P0])

    def broken(_spec: SubmitJobV1) -> None:
        raise OSError(36, "File name too long")

    refused = book.command(record(submit("a"), 0), now=0, admit=broken)
    assert [e.seq for e in published(refused)] == [0]  # never committed: dropped below
    ran = book.command(record(submit("b"), 1), now=0)
    assert [e.seq for e in published(ran)] == [0]  # queued, never committed either
    book.release([P0])
    book.assign([P0])
    again = book.command(record(submit("a"), 0), now=1)
    assert [(e.job_id, e.seq, e.type) for e in published(again)] == [
        ("a", 0, "trainer.job.queued.v1")
    ]
    again = book.command(record(submit("b"), 1), now=1)
    assert [(e.job_id, e.seq) for e in published(again)] == [("b", 0)]


def test_a_partition_taken_back_keeps_what_the_state_topic_committed() -> None:
    book = JobBook(policy(), refuse_bad)
    book.assign([P0])
    out = book.command(record(submit("a"), 0), now=0)
    out += book.ended("a", 1, completed("a"), now=1)
    for state in states(out):  # committed: the state topic's reader hands them back
        book.load(state)
    book.command(record(cancel("a"), 1), now=2)  # its rejection is dropped with P0
    book.release([P0])
    book.assign([P0])
    assert book.states["a"].status is JobStatus.COMPLETED
    assert book.states["a"].last_seq == 1  # seq 2 went out with P0's dropped transaction
    assert published(book.command(record(submit("a"), 0), now=3)) == []  # a duplicate


def test_a_crash_markers_refusal_of_a_resumed_jobs_submit_ends_the_job() -> None:
    """The service died handling the submit of a job that had run before (its state says
    running): refused unhandled, the submit's offset is committed, so the job ends here, with
    the refusal's code as its one terminal event, or it would never end."""
    book = JobBook(policy(), refuse_bad)
    book.assign([P0])
    running = JobStateV1(
        job_id="a",
        user_id=7,
        status=JobStatus.RUNNING,
        request_digest="d",
        partition=0,
        offset=0,
        attempt=2,
        last_seq=4,
    )
    book.load(running)
    crashed = ModelTrainerError(C.COMMAND_CRASHED, "the service died handling it")
    out = book.refuse(record(submit("a"), 0), crashed, now=1)
    [ended] = [e for e in published(out) if is_terminal(e)]
    assert isinstance(ended, FailedEventV1)
    assert (ended.code, ended.seq, ended.attempt) == (C.COMMAND_CRASHED, 5, 2)
    assert [(s.status, s.last_seq) for s in states(out)] == [(JobStatus.FAILED, 5)]
    assert [e.ended for e in out if isinstance(e, Publish)] == ["a"]
    assert commits(out) == {P0: 1}
    assert [r.topic for e in out if isinstance(e, Publish) for r in records_of(e)] == [
        "dlq",
        "events",
        "state",
    ]
    # A refused command of no job, or of an ended one, gets the dead letter alone.
    again = book.refuse(record(submit("a"), 1), crashed, now=2)
    assert published(again) == []


def test_a_held_evaluation_goes_out_before_a_later_step() -> None:
    book = JobBook(policy(max_progress_per_s=1.0), refuse_bad)
    book.assign([P0])
    book.command(record(submit("a"), 0), now=0)
    out: list[object] = []
    out += book.progress("a", 1, progress("a", 1), now=0.1)
    evaluated = progress("a", 50).model_copy(update={"val_loss": 2.0})
    out += book.progress("a", 1, evaluated, now=0.5)  # too soon: held
    out += book.progress("a", 1, progress("a", 56), now=1.2)  # due: the evaluation first
    out += book.tick(now=5.0)
    steps = [e.step for e in published(out) if isinstance(e, ProgressEventV1)]
    assert steps == [1, 50, 56]
