"""A job the book owns, and the worker slot its current run holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from model_trainer_contracts import ProgressEventV1, SubmitJobV1

from model_trainer.book.lifecycle import State, step
from model_trainer.book.records import TP
from model_trainer.core.envelope import Envelope


class Killed(StrEnum):
    """Why the book killed a run: decides what its death means."""

    CANCEL = "cancel"
    TIMEOUT = "timeout"
    HANDBACK = "handback"
    STALL = "stall"


@dataclass
class Job:
    """A job this instance owns and has not ended."""

    spec: SubmitJobV1
    digest: str
    record: TP
    offset: int
    submitted_at: float
    attempt: int  # runs started so far
    failures: int  # infrastructure failures so far
    next_seq: int
    last_heard: float | None = None  # None until a worker has the run
    deadline: float | None = None  # of the current run
    kill_at: float | None = None  # when to kill the current run if it has not ended
    cancel_reason: str | None = None  # the last cancel's reason: CANCELLING says one came
    last_progress_at: float | None = None  # when a progress event last went out
    state_at: float | None = None  # when its state record last went out
    held: ProgressEventV1 | None = None  # the newest progress not yet out
    held_eval: ProgressEventV1 | None = None  # the newest evaluation not yet out
    not_before: float | None = None  # queued, it waits until then (its run filled the disk)
    tenant: str = "default"  # whose commands topic submitted it
    _state: State = field(default=State.NEW, init=False)  # changed by move() alone

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def state(self) -> State:
        return self._state

    def move(self, to: State) -> None:
        """The job's next state, as the lifecycle's table allows (else LifecycleError)."""
        self._state = step(self.job_id, self._state, to)

    def envelope(self) -> Envelope:
        """The envelope of the job's next event; takes its seq."""
        seq = self.next_seq
        self.next_seq += 1
        return Envelope(
            job_id=self.job_id,
            user_id=self.spec.user_id,
            seq=seq,
            attempt=max(1, self.attempt),
            labels=dict(self.spec.labels),
        )


@dataclass
class RunSlot:
    """The workers busy with one run (``processes`` of them), until the pool reports it over."""

    job_id: str
    attempt: int
    killed: Killed | None = None
    processes: int = 1
