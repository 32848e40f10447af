"""Job state in a compacted topic keyed by ``job_id``, and per-partition offset tracking.

Each instance reads the whole state topic at start and keeps tailing it, so whichever instance
owns a commands partition knows every job's status, attempt and last published ``seq``. State
records are written in the same Kafka transaction as the events they describe, so the state
never claims an event that was not published, nor misses a terminal event that was.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from datetime import UTC, datetime
from enum import StrEnum

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from model_trainer_contracts import SubmitJobV1
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .kafka import Outgoing, assign_whole_topic, committed_reader, to_record
from .settings import Settings

log = structlog.get_logger(__name__)


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


def _now() -> datetime:
    return datetime.now(UTC)


class JobState(BaseModel):
    """The latest known state of one job (the value of its record on the state topic)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    job_id: str
    spec_digest: str
    status: JobStatus
    attempt: int = Field(1, ge=1)
    last_seq: int = Field(-1, ge=-1, description="Highest seq published; -1 before any.")
    updated_at: datetime = Field(default_factory=_now)

    def record(self, topic: str) -> Outgoing:
        return Outgoing(topic, self.job_id.encode(), self.model_dump_json().encode(), [])


def spec_digest(job: SubmitJobV1) -> str:
    """A digest of what the job asks for, independent of field order and formatting."""
    canonical = json.dumps(job.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class StateStore:
    """Every job's latest state, read from the compacted state topic and kept current."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._states: dict[str, JobState] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._tail: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()

    def get(self, job_id: str) -> JobState | None:
        return self._states.get(job_id)

    def put(self, state: JobState) -> None:
        """Record a state this instance is about to publish (newer status wins)."""
        self._states[state.job_id] = state

    async def start(self) -> None:
        settings = self._settings
        self._consumer = committed_reader(settings.bootstrap_servers)
        await self._consumer.start()
        if not await assign_whole_topic(
            self._consumer, settings.bootstrap_servers, settings.state_topic
        ):
            raise RuntimeError(
                f"state topic {settings.state_topic!r} does not exist: create it "
                "(compacted) or set MODEL_TRAINER_CREATE_TOPICS=true"
            )
        await self.catch_up()
        self._tail = asyncio.create_task(self._follow(), name="state-tail")

    async def catch_up(self) -> None:
        """Return once every state record committed before this call has been read."""
        consumer = self._consumer
        if consumer is None:
            return
        tps: list[TopicPartition] = list(consumer.assignment())
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        while True:
            behind = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
            if not behind:
                return
            if self._tail is None:
                await self._read_once(consumer)
            else:
                await asyncio.sleep(0.05)

    async def _read_once(self, consumer: AIOKafkaConsumer) -> None:
        batches = await consumer.getmany(timeout_ms=200)
        for messages in batches.values():
            for message in messages:
                record = to_record(message)
                if not record.value:
                    continue
                try:
                    state = JobState.model_validate_json(record.value)
                except ValidationError:
                    log.warning("unreadable state record", offset=record.offset)
                    continue
                self._merge(state)

    def _merge(self, state: JobState) -> None:
        known = self._states.get(state.job_id)
        # Our own put() may be ahead of the topic; never step a job back from terminal.
        if known is not None and known.status.terminal and not state.status.terminal:
            return
        if known is not None and known.last_seq > state.last_seq and not state.status.terminal:
            return
        self._states[state.job_id] = state

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            try:
                await self._read_once(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep following through broker restarts
                log.warning("state topic read failed; retrying", error=str(exc))
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._tail is not None:
            self._tail.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tail
        if self._consumer is not None:
            await self._consumer.stop()


class OffsetTracker:
    """Per partition, the offsets handed to the service and which of them are finished.

    Jobs finish out of order; a partition's committable offset is the oldest unfinished
    offset (or one past the newest when all are finished), so a crash redelivers every
    command whose job has not reached its terminal event.
    """

    def __init__(self) -> None:
        self._open: dict[TopicPartition, dict[int, bool]] = {}

    def add(self, tp: TopicPartition, offset: int) -> None:
        self._open.setdefault(tp, {})[offset] = False

    def finish(self, tp: TopicPartition, offset: int) -> int | None:
        """Mark an offset finished; return the partition's new committable offset, if any."""
        pending = self._open.get(tp)
        if pending is None or offset not in pending:
            return None
        pending[offset] = True
        committable: int | None = None
        for off in sorted(pending):
            if not pending[off]:
                break
            committable = off + 1
            del pending[off]
        return committable

    def forget(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            self._open.pop(tp, None)

    def unfinished(self) -> int:
        return sum(1 for pending in self._open.values() for done in pending.values() if not done)
