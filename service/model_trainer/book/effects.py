"""What the job book decides: the effects the service carries out, the facts it publishes,
and the policy it decides with. Plain data: the shell's :mod:`~model_trainer.shell.wire`
turns facts into Kafka records."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from model_trainer_contracts import EventBase, JobStateV1, ModelTrainerError, SubmitJobV1

from model_trainer.book.records import TP, Record
from model_trainer.core.stop import StopReason
from model_trainer.pool.protocol import RunOrder


@dataclass(frozen=True)
class Tombstone:
    """An ended job's state record, deleted."""

    job_id: str


@dataclass(frozen=True)
class DeadLetter:
    """A command refused without an answer on its job: the record as it came, and why."""

    record: Record
    error: ModelTrainerError


FORWARDED_FROM = "forwarded_from"  # header of a command this service moved to its partition
FORWARDED_TENANT = "forwarded_tenant"  # ...and the tenant whose topic it was moved from


@dataclass(frozen=True)
class Forward:
    """A command moved to the partition ``to`` that holds its job, acting for ``tenant``
    when that is not ``to``'s own topic's tenant (None: it is)."""

    record: Record
    to: TP
    tenant: str | None

    @property
    def origin(self) -> str:
        """Where the command was read: ``partition:offset`` of its topic."""
        return f"{self.record.partition}:{self.record.offset}"


# A job's event, its state, a state's deletion, a refused or a moved command.
Fact = EventBase | JobStateV1 | Tombstone | DeadLetter | Forward


@dataclass(frozen=True)
class Publish:
    """Facts to publish in one transaction, in this order, committing ``commits`` with them.

    ``via`` is the commands partition the facts speak for: its owner's transactional
    producer carries them, so an instance that lost the partition can commit none of them."""

    via: TP
    facts: tuple[Fact, ...]
    commits: dict[TP, int]
    ended: str | None = None  # a job ended for good: its checkpoints go once this commits

    @property
    def events(self) -> tuple[EventBase, ...]:
        """The job events among the facts (for the job's metrics.jsonl)."""
        return tuple(fact for fact in self.facts if isinstance(fact, EventBase))


@dataclass(frozen=True)
class Run:
    job_id: str
    order: RunOrder


@dataclass(frozen=True)
class Stop:
    job_id: str
    reason: StopReason


@dataclass(frozen=True)
class Kill:
    job_id: str
    attempt: int


Effect = Publish | Run | Stop | Kill


@dataclass(frozen=True)
class Policy:
    """The settings the book decides with (see :class:`~.settings.Settings`)."""

    events_topic: str
    state_topic: str
    dead_letter_topic: str
    slots: int  # worker processes
    max_running_per_user: int | None  # None: no limit
    max_progress_per_s: float  # progress events a job may publish a second
    state_retention_s: float  # an ended job's state record is deleted (tombstoned) after
    state_every_s: float  # a running job's progress rewrites its state record at most this often
    max_attempts: int  # infrastructure failures (worker death, stall) a job may have
    cancel_grace_s: float  # a cancelled or timed-out run still going after this is killed
    handback_grace_s: float  # a revoked or shut-down run still going after this is killed
    stall_timeout_s: float  # a run silent this long is killed and retried
    checkpoint_every: int
    data_root: Path
    artifacts_root: Path
    max_corpus_bytes: int
    max_command_bytes: int
    commands_topic: str = "trainer.commands"
    default_timeout_s: float | None = None  # a job that sets no timeout_s gets this one
    artifacts_url: str | None = None  # object storage for checkpoints and artifacts
    storage_retry_s: float = 120.0
    disk_full_retry_s: float = 60.0  # a job whose run filled the disk waits this long, queued
    tenants: tuple[str, ...] = ()  # each with its commands topic <commands_topic>.<tenant>
    admin_tenant: str | None = None  # the tenant whose topic may cancel any job


def request_digest(job: SubmitJobV1) -> str:
    """What the job asks for, independent of field order and formatting (for conflicts)."""
    canonical = json.dumps(job.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
