"""Building blocks for driving the job book without Kafka, workers or torch."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from model_trainer.book.book import JobBook
from model_trainer.book.effects import Effect, Kill, Policy, Publish, Run, Stop
from model_trainer.book.records import TP, Record
from model_trainer.core.stop import StopReason
from model_trainer.pool.protocol import RunStarted
from model_trainer.shell.wire import Outgoing, Topics, records
from model_trainer_contracts import (
    CancelJobV1,
    CompletedEventV1,
    EventBase,
    FailedEventV1,
    JobStateV1,
    ModelTrainerError,
    ModelTrainerErrorCode,
    ProgressEventV1,
    SubmitJobV1,
    decode_event,
    encode,
)

TOPIC = "jobs"
PARTITIONS = 2


BASE = Policy(
    commands_topic=TOPIC,
    events_topic="events",
    state_topic="state",
    dead_letter_topic="dlq",
    slots=1,
    max_running_per_user=None,
    max_progress_per_s=1000.0,
    state_retention_s=7 * 24 * 3600.0,
    state_every_s=0.0,
    max_attempts=2,
    cancel_grace_s=3.0,
    handback_grace_s=10.0,
    stall_timeout_s=600.0,
    checkpoint_every=100,
    data_root=Path("/data"),
    artifacts_root=Path("/artifacts"),
    max_corpus_bytes=1 << 20,
    max_command_bytes=100_000,
)


def policy(
    *,
    slots: int = 1,
    max_attempts: int = 2,
    cancel_grace_s: float = 3.0,
    handback_grace_s: float = 10.0,
    stall_timeout_s: float = 600.0,
    max_running_per_user: int | None = None,
    max_progress_per_s: float = 1000.0,
    state_retention_s: float = 7 * 24 * 3600.0,
    state_every_s: float = 0.0,
) -> Policy:
    return dataclasses.replace(
        BASE,
        slots=slots,
        max_running_per_user=max_running_per_user,
        max_progress_per_s=max_progress_per_s,
        state_retention_s=state_retention_s,
        state_every_s=state_every_s,
        max_attempts=max_attempts,
        cancel_grace_s=cancel_grace_s,
        handback_grace_s=handback_grace_s,
        stall_timeout_s=stall_timeout_s,
    )


def refuse_bad(job: SubmitJobV1) -> None:
    """Admission for tests: a job whose id starts with "bad" is refused."""
    if job.job_id.startswith("bad"):
        raise ModelTrainerError(ModelTrainerErrorCode.INVALID_MODEL_SIZE, "too big for the test")


def new_book(
    *,
    slots: int = 1,
    max_attempts: int = 2,
    cancel_grace_s: float = 3.0,
    handback_grace_s: float = 10.0,
    stall_timeout_s: float = 600.0,
) -> JobBook:
    rules = policy(
        slots=slots,
        max_attempts=max_attempts,
        cancel_grace_s=cancel_grace_s,
        handback_grace_s=handback_grace_s,
        stall_timeout_s=stall_timeout_s,
    )
    book = JobBook(rules, refuse_bad)
    book.assign([TP(TOPIC, p) for p in range(PARTITIONS)])
    return book


def submit(job_id: str, *, steps: int = 10, timeout_s: float | None = None) -> SubmitJobV1:
    return SubmitJobV1.model_validate(
        {
            "job_id": job_id,
            "user_id": 7,
            "backend": "char_lstm",
            "data": {"inline_text": "hello world " * 10},
            "training": {"max_steps": steps},
            "timeout_s": timeout_s,
        }
    )


def cancel(job_id: str) -> CancelJobV1:
    return CancelJobV1(job_id=job_id, reason="test")


def record(
    command: SubmitJobV1 | CancelJobV1 | bytes,
    offset: int,
    *,
    partition: int = 0,
    key: bytes | None = None,
) -> Record:
    value = command if isinstance(command, bytes) else encode(command)
    if key is None and not isinstance(command, bytes):
        key = command.job_id.encode()
    return Record(TOPIC, partition, offset, key, value, [])


def progress(job_id: str, step: int, total_steps: int = 10) -> ProgressEventV1:
    """A training step's progress (no evaluation: the book may coalesce it)."""
    return ProgressEventV1(
        job_id=job_id,
        user_id=7,
        seq=0,
        epoch=0,
        total_epochs=1,
        step=step,
        total_steps=total_steps,
        train_loss=1.0,
        train_ppl=2.7,
        grad_norm=0.1,
        learning_rate=1e-3,
        samples_per_sec=1.0,
        tokens_per_sec=1.0,
        elapsed_s=1.0,
        eta_s=1.0,
    )


def completed(job_id: str) -> CompletedEventV1:
    return CompletedEventV1(
        job_id=job_id,
        user_id=7,
        seq=0,
        steps=10,
        duration_s=1.0,
        artifact_path="/a",
        manifest_digest="0" * 64,
    )


def user_failure(job_id: str) -> FailedEventV1:
    return FailedEventV1(
        job_id=job_id,
        user_id=7,
        seq=0,
        code=ModelTrainerErrorCode.TRAINING_NAN_LOSS,
        message="nan",
        retryable=False,
        http_status=422,
        stage="train",
    )


def records_of(publish: Publish, topics: Topics = BASE) -> list[Outgoing]:
    """A transaction's records as the service's wire module encodes them (the assertions on
    their bytes hold the encoding to what it was when the book built records itself)."""
    return records(publish, topics)


def published(effects: Sequence[object], topic: str = "events") -> list[EventBase]:
    """The events among the effects' records, decoded."""
    return [
        decode_event(r.value)
        for e in effects
        if isinstance(e, Publish)
        for r in records_of(e)
        if r.topic == topic and r.value is not None
    ]


def states(effects: Sequence[object]) -> list[JobStateV1]:
    return [
        JobStateV1.model_validate_json(r.value)
        for e in effects
        if isinstance(e, Publish)
        for r in records_of(e)
        if r.topic == "state" and r.value is not None
    ]


def commits(effects: Sequence[object]) -> dict[TP, int]:
    out: dict[TP, int] = {}
    for e in effects:
        if isinstance(e, Publish):
            out.update(e.commits)
    return out


def is_terminal(event: EventBase) -> bool:
    if isinstance(event, CompletedEventV1):
        return True
    return isinstance(event, FailedEventV1) and event.details.get("command_rejected") is not True


@dataclass
class WorkerRun:
    """A run a pool's worker has: what it was told, how far it got."""

    job_id: str
    attempt: int
    stop: StopReason | None = None
    steps: int = 0


# What a pool says to its book: (kind, job_id, attempt, payload), oldest first.
Report = tuple[str, str, int, object]
# What a running worker may do next: a step, a completed or failed end, death, or what its
# stop asked for.
WORKER_ACTS = ("progress", "end", "fail", "die", "obey")


@dataclass
class Pool:
    """The workers of one book, as the real pool behaves: orders wait for a free slot, a stop
    of a waiting order hands it back unstarted, a kill reports the worker's death."""

    slots: int
    orders: list[Run] = field(default_factory=list)  # waiting for a free worker
    runs: dict[int, WorkerRun] = field(default_factory=dict)  # by worker slot
    inbox: list[Report] = field(default_factory=list)  # pool → book

    def take(self, effect: Run | Stop | Kill) -> None:
        if isinstance(effect, Run):
            running = {r.job_id for r in self.runs.values()}
            queued = {o.job_id for o in self.orders}
            assert effect.job_id not in running | queued, f"{effect.job_id} runs twice"
            self.orders.append(effect)
        elif isinstance(effect, Stop):
            slot = self.slot_of(effect.job_id)
            if slot is not None:
                self.runs[slot].stop = effect.reason
            else:
                self._unqueue(effect.job_id)
        else:
            slot = self.slot_of(effect.job_id, effect.attempt)
            if slot is None:
                self._unqueue(effect.job_id)
            else:
                run = self.runs.pop(slot)
                self.inbox.append(("died", run.job_id, run.attempt, -9))

    def _unqueue(self, job_id: str) -> None:
        for order in list(self.orders):  # as the pool: a waiting run never starts
            if order.job_id == job_id:
                self.orders.remove(order)
                self.inbox.append(("preempted", order.job_id, order.order.attempt, -1))

    def hand_out(self) -> None:
        for slot in range(self.slots):
            if slot not in self.runs and self.orders:
                order = self.orders.pop(0)
                self.runs[slot] = WorkerRun(order.job_id, order.order.attempt)
                self.inbox.append(("started", order.job_id, order.order.attempt, None))

    def slot_of(self, job_id: str, attempt: int | None = None) -> int | None:
        for slot, run in self.runs.items():
            if run.job_id == job_id and attempt in (None, run.attempt):
                return slot
        return None

    def finish(self, slot: int, kind: str, payload: object) -> None:
        run = self.runs.pop(slot)
        self.inbox.append((kind, run.job_id, run.attempt, payload))

    def step(self, run: WorkerRun) -> None:
        run.steps += 1
        self.inbox.append(("progress", run.job_id, run.attempt, progress(run.job_id, run.steps)))

    def obey(self, slot: int) -> None:
        """The run at ``slot`` does what it was asked: checkpoint and stop, or end."""
        run = self.runs[slot]
        if run.stop is StopReason.SHUTDOWN:
            self.finish(slot, "preempted", run.steps)
        elif run.stop is not None:
            code = (
                ModelTrainerErrorCode.TRAINING_CANCELLED
                if run.stop is StopReason.CANCEL
                else ModelTrainerErrorCode.TRAINING_TIMEOUT
            )
            self.finish(slot, "ended", user_failure(run.job_id).model_copy(update={"code": code}))

    def act(self, slot: int, what: str) -> None:
        """The worker at ``slot`` does one of :data:`WORKER_ACTS` (the machines' rule)."""
        run = self.runs[slot]
        if what == "progress":
            self.step(run)
        elif what == "end":
            self.finish(slot, "ended", completed(run.job_id))
        elif what == "fail":
            self.finish(slot, "ended", user_failure(run.job_id))
        elif what == "die":
            self.finish(slot, "died", None)
        else:
            self.obey(slot)

    def tell(self, book: JobBook, report: Report, now: float) -> list[Effect]:
        """Hand one of the pool's messages to ``book``."""
        kind, job_id, attempt, payload = report
        if kind == "progress" and isinstance(payload, EventBase):
            return book.progress(job_id, attempt, payload, now)
        if kind == "ended" and isinstance(payload, EventBase):
            return book.ended(job_id, attempt, payload, now)
        if kind == "started":
            return book.report(RunStarted(job_id, attempt), now)
        if kind == "preempted" and isinstance(payload, int):
            return book.preempted(job_id, attempt, payload, now)
        return book.died(job_id, attempt, -9, now)

    def clear(self) -> None:
        """The pool's process went down with its workers."""
        self.orders.clear()
        self.runs.clear()
        self.inbox.clear()
