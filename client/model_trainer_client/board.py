"""What the client knows of jobs, built from what it reads: events and state records in, one
:class:`JobView` per job out, each with its metric series. Pure: no I/O, no clock.

``status``, ``watch``, the web dashboard and the TensorBoard export all read through this.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import assert_never

from model_trainer_contracts import (
    CompletedEventV1,
    ConfigEventV1,
    DownloadEventV1,
    FailedEventV1,
    JobStateV1,
    JobStatus,
    ModelTrainerErrorCode,
    ProgressEventV1,
)
from pydantic import JsonValue

from .decode import QueuedNotice, Update, is_rejection

SERIES = ("train_loss", "val_loss", "learning_rate", "tokens_per_sec")
MAX_POINTS = 4000  # per series; past it the older half is thinned to every other point

EXIT_COMPLETED = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_TIMED_OUT = 3
EXIT_CANCELLED = 4
EXIT_REJECTED = 5
EXIT_INTERRUPTED = 130


class ViewStatus(StrEnum):
    """A job's status as the views show it: the service's :class:`JobStatus`, with a
    cancelled job told apart from a failed one (its failed event's code says so)."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def active(self) -> bool:
        return self in (ViewStatus.QUEUED, ViewStatus.RUNNING)

    @property
    def exit_code(self) -> int | None:
        """The CLI's exit code for a job in this status; ``None`` while it goes on."""
        match self:
            case ViewStatus.QUEUED | ViewStatus.RUNNING:
                return None
            case ViewStatus.COMPLETED:
                return EXIT_COMPLETED
            case ViewStatus.FAILED:
                return EXIT_FAILED
            case ViewStatus.CANCELLED:
                return EXIT_CANCELLED
            case ViewStatus.REJECTED:
                return EXIT_REJECTED
            case _:
                assert_never(self)


def view_status(status: JobStatus, error_code: str | None) -> ViewStatus:
    """What the views show for a job in ``status`` whose failure (if any) has ``error_code``."""
    match status:
        case JobStatus.QUEUED:
            return ViewStatus.QUEUED
        case JobStatus.RUNNING:
            return ViewStatus.RUNNING
        case JobStatus.COMPLETED:
            return ViewStatus.COMPLETED
        case JobStatus.FAILED:
            if error_code == ModelTrainerErrorCode.TRAINING_CANCELLED:
                return ViewStatus.CANCELLED
            return ViewStatus.FAILED
        case JobStatus.REJECTED:
            return ViewStatus.REJECTED
        case _:
            assert_never(status)


@dataclass
class Series:
    """``(step, value)`` points in step order. ``epoch`` changes whenever points already
    handed out change (a resumed attempt rewinds the steps; thinning), so a reader that kept
    ``epoch`` and a count knows whether to append or to start over."""

    points: list[tuple[int, float]] = field(default_factory=list)
    epoch: int = 0

    def add(self, step: int, value: float) -> None:
        if self.points and step <= self.points[-1][0]:
            # a later attempt resumed from an earlier checkpoint: its steps replace these
            self.points = [point for point in self.points if point[0] < step]
            self.epoch += 1
        self.points.append((step, value))
        if len(self.points) > MAX_POINTS:
            half = len(self.points) // 2
            self.points = self.points[:half:2] + self.points[half:]
            self.epoch += 1


@dataclass
class JobView:
    """One job as read from the events and state topics."""

    job_id: str
    user_id: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    attempt: int = 0
    failures: int = 0
    event_status: JobStatus | None = None
    event_seq: int = -1
    state_status: JobStatus | None = None
    state_seq: int = -1
    rejected: bool = False  # only a refused command is known of this job_id
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    total_epochs: int = 0
    train_loss: float | None = None
    train_ppl: float | None = None
    val_loss: float | None = None
    best_val_loss: float | None = None
    test_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_sec: float | None = None
    eta_s: float | None = None
    progress_at: datetime | None = None
    model: str | None = None
    device: str | None = None
    queue_position: int | None = None
    queue_reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_stage: str | None = None
    artifact_path: str | None = None
    duration_s: float | None = None
    submitted_at: datetime | None = None
    updated_at: datetime | None = None
    series: dict[str, Series] = field(default_factory=lambda: {name: Series() for name in SERIES})

    @property
    def status(self) -> JobStatus:
        """The newer of what the events and the state record say; terminal is final."""
        if self.rejected:
            return JobStatus.REJECTED
        if self.event_status is None:
            return JobStatus.QUEUED if self.state_status is None else self.state_status
        if self.state_status is None:
            return self.event_status
        if self.event_status.terminal:
            return self.event_status
        if self.state_status.terminal or self.state_seq >= self.event_seq:
            return self.state_status
        return self.event_status

    @property
    def shown(self) -> ViewStatus:
        """The status the views show (cancelled told apart from failed)."""
        return view_status(self.status, self.error_code)

    @property
    def active(self) -> bool:
        return self.shown.active

    @property
    def exit_code(self) -> int | None:
        """0 completed, 1 failed, 4 cancelled, 5 rejected, ``None`` while it goes on."""
        return self.shown.exit_code

    @property
    def fraction(self) -> float | None:
        if self.total_steps <= 0:
            return None
        return min(1.0, self.step / self.total_steps)

    def eta_at(self, now: datetime) -> float | None:
        """Seconds left as of ``now``: the last progress event's estimate, aged."""
        if self.eta_s is None or self.status is not JobStatus.RUNNING:
            return None
        if self.progress_at is None:
            return self.eta_s
        since = max(0.0, (now - self.progress_at).total_seconds())
        return max(0.0, self.eta_s - since)

    def row(self) -> dict[str, JsonValue]:
        """The job's table row, as JSON."""
        return {
            "job_id": self.job_id,
            "status": str(self.shown),
            "user_id": self.user_id,
            "labels": dict(self.labels),
            "attempt": self.attempt,
            "failures": self.failures,
            "step": self.step,
            "total_steps": self.total_steps,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            "best_val_loss": self.best_val_loss,
            "learning_rate": self.learning_rate,
            "tokens_per_sec": self.tokens_per_sec,
            "eta_s": self.eta_s,
            "model": self.model,
            "device": self.device,
            "queue_position": self.queue_position,
            "queue_reason": self.queue_reason,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "error_stage": self.error_stage,
            "artifact_path": self.artifact_path,
            "duration_s": self.duration_s,
            "submitted_at": _iso(self.submitted_at),
            "updated_at": _iso(self.updated_at),
        }


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.isoformat()


class JobBoard:
    """Every job read so far. Feed it events and state records in the order read."""

    def __init__(self) -> None:
        self.jobs: dict[str, JobView] = {}

    def get(self, job_id: str) -> JobView | None:
        return self.jobs.get(job_id)

    def views(self) -> list[JobView]:
        """Newest first (by submission, else by last update)."""
        return sorted(self.jobs.values(), key=_recency, reverse=True)

    def apply_all(self, items: Iterable[Update | JobStateV1]) -> set[str]:
        """Apply each; return the ids of the jobs that changed."""
        return {view.job_id for item in items if (view := self.apply(item)) is not None}

    def apply(self, item: Update | JobStateV1) -> JobView | None:
        """Apply one event or state record; return the job it changed, or ``None``."""
        if isinstance(item, JobStateV1):
            return self._apply_state(item)
        if is_rejection(item):
            return self._apply_rejection(item)
        view = self.jobs.get(item.job_id)
        if view is None or view.rejected:
            view = self.jobs[item.job_id] = JobView(job_id=item.job_id)
        if item.seq <= view.event_seq:
            return None  # read twice
        view.event_seq = item.seq
        view.user_id = item.user_id
        view.labels = dict(item.labels)
        view.attempt = max(view.attempt, item.attempt)
        view.updated_at = item.ts
        if view.submitted_at is None:
            view.submitted_at = item.ts
        _apply_event(view, item)
        return view

    def _apply_state(self, state: JobStateV1) -> JobView | None:
        view = self.jobs.get(state.job_id)
        refused = state.status is JobStatus.REJECTED
        if view is None or (view.rejected and not refused):
            view = self.jobs[state.job_id] = JobView(job_id=state.job_id)
        if refused and view.event_status is None:
            view.rejected = True  # and its refusal's reason, if the record has it
            view.error_message = view.error_message or state.error_message
        view.state_status = state.status
        view.state_seq = state.last_seq
        view.user_id = state.user_id
        view.labels = dict(state.labels)
        view.attempt = max(view.attempt, state.attempt)
        view.failures = state.failures
        view.submitted_at = state.submitted_at
        if view.updated_at is None or state.updated_at > view.updated_at:
            view.updated_at = state.updated_at
        if state.error_code is not None and view.error_code is None:
            view.error_code = state.error_code
        return view

    def _apply_rejection(self, event: FailedEventV1) -> JobView | None:
        view = self.jobs.get(event.job_id)
        if view is not None and not view.rejected:
            return None  # answers a command about a job we know; the job goes on
        view = self.jobs[event.job_id] = JobView(job_id=event.job_id, rejected=True)
        view.user_id = event.user_id
        view.submitted_at = view.updated_at = event.ts
        _fail(view, event)
        return view


def _recency(view: JobView) -> float:
    ts = view.submitted_at or view.updated_at
    return ts.timestamp() if ts is not None else 0.0


def _fail(view: JobView, event: FailedEventV1) -> None:
    view.error_code = str(event.code)
    view.error_message = event.message
    view.error_stage = event.stage


def _apply_event(view: JobView, event: Update) -> None:
    if isinstance(event, QueuedNotice):
        view.event_status = JobStatus.QUEUED
        view.queue_position = event.position
        view.queue_reason = event.reason
    elif isinstance(event, ConfigEventV1):
        view.event_status = JobStatus.RUNNING
        view.total_steps = event.total_steps
        view.total_epochs = event.total_epochs
        view.step = event.start_step
        view.learning_rate = event.learning_rate
        view.model = f"{event.model_family} {event.model_size}"
        view.device = f"{event.device}/{event.precision}"
        view.queue_position = view.queue_reason = None
    elif isinstance(event, ProgressEventV1):
        view.event_status = JobStatus.RUNNING
        view.step = event.step
        view.total_steps = event.total_steps
        view.epoch = event.epoch
        view.total_epochs = event.total_epochs
        view.train_loss = event.train_loss
        view.train_ppl = event.train_ppl
        view.learning_rate = event.learning_rate
        view.grad_norm = event.grad_norm
        view.tokens_per_sec = event.tokens_per_sec
        view.eta_s = event.eta_s
        view.progress_at = event.ts
        series = view.series
        series["train_loss"].add(event.step, event.train_loss)
        series["learning_rate"].add(event.step, event.learning_rate)
        series["tokens_per_sec"].add(event.step, event.tokens_per_sec)
        if event.val_loss is not None:
            view.val_loss = event.val_loss
            series["val_loss"].add(event.step, event.val_loss)
    elif isinstance(event, DownloadEventV1):
        view.event_status = JobStatus.RUNNING  # fetching its corpus, before its config
    elif isinstance(event, CompletedEventV1):
        view.event_status = JobStatus.COMPLETED
        view.step = event.steps
        view.best_val_loss = event.best_val_loss
        view.test_loss = event.test_loss
        view.artifact_path = event.artifact_path
        view.duration_s = event.duration_s
        view.eta_s = None
    else:  # FailedEventV1, not a rejection
        view.event_status = JobStatus.FAILED
        view.eta_s = None
        _fail(view, event)
