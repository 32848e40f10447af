"""The service: consume commands, run jobs on the pool, publish every job's events.

Guarantees, and where they come from:

* **Exactly one terminal event per accepted job.** A terminal event, the job's state record
  and the commit of its command's offset go out in one Kafka transaction
  (:mod:`.publisher`). A redelivered command whose job state is terminal is not run again.
* **Nothing lost.** A partition's offset is committed only up to its oldest command whose job
  has not ended (:class:`.state.OffsetTracker`), so a crash redelivers unfinished jobs; they
  resume from their last checkpoint with ``attempt`` + 1 and ``seq`` continuing.
* **A healthy group member while jobs run for hours.** Jobs run in other processes; this loop
  keeps calling ``getmany`` (paused partitions return nothing) and never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from model_trainer_contracts import (
    CancelJobV1,
    CompletedEventV1,
    Event,
    EventBase,
    ModelTrainerError,
    ModelTrainerErrorCode,
    SubmitJobV1,
    ce_headers,
    decode_command,
    decode_event,
    encode,
    salvage_job_id,
    salvage_user_id,
)

from .core.envelope import Envelope, failed_event
from .core.stop import StopReason
from .kafka import Outgoing, Record, ensure_topics, to_record, wait_for_broker
from .metrics import CONSUMER_LAG, DEAD_LETTERS, JOB_DURATION, JOBS, JOBS_FINISHED
from .pool import WorkerDied, WorkerPool
from .protocol import JobEnded, JobEvent, JobPreempted, RunOrder
from .publisher import Publisher
from .settings import Settings
from .state import JobState, JobStatus, OffsetTracker, StateStore, spec_digest

log = structlog.get_logger(__name__)
DEAD_LETTER_MAX_BYTES = 900_000  # under Kafka's default 1 MB record limit, headers included


@dataclass
class ActiveJob:
    """A job this instance accepted and has not finished."""

    job: SubmitJobV1
    digest: str
    record: Record
    attempt: int
    next_seq: int
    status: JobStatus = JobStatus.QUEUED
    started_at: float | None = None
    kill_at: float | None = None  # a cancelled job still running then is killed
    preempting: bool = False

    @property
    def job_id(self) -> str:
        return self.job.job_id

    def envelope(self) -> Envelope:
        seq = self.next_seq
        self.next_seq += 1
        return Envelope(
            job_id=self.job_id,
            user_id=self.job.user_id,
            seq=seq,
            attempt=self.attempt,
            labels=dict(self.job.labels),
        )


class _Rebalance:
    """Forwards aiokafka's rebalance callbacks to the service (registered as a listener)."""

    def __init__(self, service: TrainerService) -> None:
        self._service = service

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._service.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._service.on_assigned(set(assigned))


ConsumerRebalanceListener.register(_Rebalance)


class TrainerService:
    """One instance of the service. ``await run(stop)`` serves until ``stop`` is set."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Without a stable instance id, a restart cannot fence its predecessor; the pid keeps
        # two instances on one host from fencing each other.
        instance = settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        self.pool = WorkerPool(
            settings.workers, settings.torch_threads, settings.log_level, settings.log_format
        )
        self.publisher = Publisher(settings, transactional_id=f"{settings.group_id}-{instance}")
        self.state = StateStore(settings)
        self.offsets = OffsetTracker()
        self.jobs: dict[str, ActiveJob] = {}
        self.queue: deque[str] = deque()
        self.assigned: set[TopicPartition] = set()
        self.consumer: AIOKafkaConsumer | None = None
        self.started = asyncio.Event()
        self._paused = False
        self._stopping = False
        self.broker_reachable = True
        self._jobs_changed = asyncio.Event()

    # ---------------------------------------------------------------- lifecycle

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        await wait_for_broker(settings.bootstrap_servers, timeout_s=60)
        if settings.create_topics:
            await ensure_topics(settings)
        await self.state.start()
        await self.publisher.start()
        await self.pool.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers,
            group_id=settings.group_id,
            group_instance_id=settings.instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            rebalance_timeout_ms=settings.rebalance_timeout_ms,
            max_partition_fetch_bytes=max(1 << 20, settings.max_command_bytes + 4096),
        )
        self.consumer.subscribe([settings.commands_topic], listener=_Rebalance(self))
        await self.consumer.start()
        self.started.set()
        log.info("service started", commands_topic=settings.commands_topic, group=settings.group_id)
        tasks = [
            asyncio.create_task(self._consume(), name="consume"),
            asyncio.create_task(self._handle_pool(), name="pool-messages"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
        ]
        stopped = asyncio.create_task(stop.wait())
        # A fenced publisher means another process took this instance's id: stop at once.
        fenced = asyncio.create_task(self.publisher.failed(), name="publisher")
        done, _ = await asyncio.wait([*tasks, stopped, fenced], return_when=asyncio.FIRST_COMPLETED)
        fenced.cancel()
        for task in done:
            if task is not stopped and task.exception() is not None:
                log.error("service task failed", task=task.get_name(), error=repr(task.exception()))
        await self._shutdown(tasks)

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        """Stop fetching, checkpoint running jobs, publish what is buffered, leave."""
        self._stopping = True
        grace = self.settings.shutdown_grace_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        consume = tasks[0]
        consume.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consume
        running = [job for job in self.jobs.values() if job.status is JobStatus.RUNNING]
        log.info("shutting down", running=len(running), queued=len(self.queue))
        for job in running:
            job.preempting = True
            self.pool.request_stop(job.job_id, StopReason.SHUTDOWN)
        stopped = await self._wait_for(
            lambda: all(j.status is not JobStatus.RUNNING for j in self.jobs.values()),
            max(0.0, deadline - 3 - loop.time()),
        )
        if not stopped:
            log.warning("jobs did not checkpoint within the grace", jobs=self.pool.running())
        for task in tasks[1:]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.publisher.stop(timeout_s=max(1.0, deadline - loop.time() - 1))
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.consumer.stop(), timeout=5)
        await self.pool.stop(timeout_s=2)
        await self.state.stop()
        log.info("service stopped")

    async def _wait_for(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``done()`` holds (re-checked whenever a job ends), at most timeout_s."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not done():
                    self._jobs_changed.clear()
                    await self._jobs_changed.wait()
        return done()

    @property
    def ready(self) -> bool:
        return self.started.is_set() and self.publisher.healthy and not self._stopping

    # ---------------------------------------------------------------- consuming

    async def _consume(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        while True:
            # Take no more than the queue has room for, so its bound holds within a batch.
            room = self.settings.queue_size - len(self.queue) + self.pool.idle()
            batches = await consumer.getmany(timeout_ms=200, max_records=max(1, min(room, 100)))
            for messages in batches.values():
                for message in messages:
                    await self._on_command(to_record(message))
                    self._dispatch()
            self._apply_backpressure()

    def _apply_backpressure(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        full = len(self.queue) >= self.settings.queue_size and self.pool.idle() == 0
        if full and not self._paused:
            consumer.pause(*consumer.assignment())
            self._paused = True
            log.info("pool busy and queue full: partitions paused", queued=len(self.queue))
        elif not full and self._paused:
            consumer.resume(*consumer.assignment())
            self._paused = False
            log.info("partitions resumed")

    async def _on_command(self, record: Record) -> None:
        self.offsets.add(record.tp, record.offset)
        try:
            command = decode_command(record.value, max_bytes=self.settings.max_command_bytes)
        except ModelTrainerError as error:
            self._dead_letter(record, error)
            return
        if isinstance(command, SubmitJobV1):
            self._on_submit(command, record)
        else:
            self._on_cancel(command, record)

    def _settle(self, record: Record, records: list[Outgoing]) -> asyncio.Future[None]:
        """Publish ``records`` with the commit of every offset this record's end unblocks."""
        committable = self.offsets.finish(record.tp, record.offset)
        offsets = {record.tp: committable} if committable is not None else {}
        return self.publisher.publish(records, offsets)

    def _event_record(self, event: EventBase) -> Outgoing:
        return Outgoing(
            self.settings.events_topic, event.job_id.encode(), encode(event), ce_headers(event)
        )

    def _rejection(self, job_id: str, user_id: int, error: ModelTrainerError) -> Outgoing:
        """A failed event answering a refused command; it does not end any accepted job."""
        known = self.jobs.get(job_id)
        state = self.state.get(job_id)
        seq = known.next_seq if known else (state.last_seq + 1 if state else 0)
        error.details.setdefault("command_rejected", True)
        envelope = Envelope(job_id=job_id, user_id=user_id, seq=seq, attempt=1, labels={})
        return self._event_record(failed_event(envelope, error))

    def _dead_letter(self, record: Record, error: ModelTrainerError) -> None:
        DEAD_LETTERS.labels(code=str(error.code)).inc()
        headers = [
            ("error_code", str(error.code).encode()),
            ("error_message", error.message[:2048].encode()),
            ("original_topic", record.topic.encode()),
            ("original_partition", str(record.partition).encode()),
            ("original_offset", str(record.offset).encode()),
        ]
        value = record.value
        if len(value) > DEAD_LETTER_MAX_BYTES:
            # The dead letter must fit the broker's record limit, or publishing it would be
            # retried forever; its header says how much of the original it keeps.
            headers.append(("original_size", str(len(value)).encode()))
            value = value[:DEAD_LETTER_MAX_BYTES]
        records = [Outgoing(self.settings.dead_letter_topic, record.key or b"", value, headers)]
        job_id = salvage_job_id(record.value)
        if job_id is not None:
            records.append(self._rejection(job_id, salvage_user_id(record.value), error))
        log.info(
            "command dead-lettered",
            code=str(error.code),
            error=error.message,
            job_id=job_id,
            offset=record.offset,
        )
        self._settle(record, records)

    def _on_submit(self, job: SubmitJobV1, record: Record) -> None:
        bound = log.bind(job_id=job.job_id)
        digest = spec_digest(job)
        active = self.jobs.get(job.job_id)
        state = self.state.get(job.job_id)
        known_digest = active.digest if active else (state.spec_digest if state else None)
        if known_digest is not None and known_digest != digest:
            bound.info("job_id reused with a different spec")
            error = ModelTrainerError(
                ModelTrainerErrorCode.JOB_ID_CONFLICT,
                f"job {job.job_id} was already submitted with a different spec",
                details={"spec_digest": digest, "existing_spec_digest": known_digest},
            )
            self._settle(record, [self._rejection(job.job_id, job.user_id, error)])
            return
        if active is not None or (state is not None and state.status.terminal):
            bound.info("duplicate submit ignored", status=str(state.status) if state else "active")
            self._settle(record, [])
            return
        resumed = state is not None and state.status is JobStatus.RUNNING
        attempt = (state.attempt + 1 if resumed else state.attempt) if state else 1
        next_seq = state.last_seq + 1 if state else 0
        active = ActiveJob(job, digest, record, attempt, next_seq)
        self.jobs[job.job_id] = active
        self.queue.append(job.job_id)
        self.publisher.publish([self._state_record(active, active.status)])
        bound.info("job accepted", attempt=attempt, queued=len(self.queue))
        self._update_gauges()

    def _on_cancel(self, cancel: CancelJobV1, record: Record) -> None:
        bound = log.bind(job_id=cancel.job_id)
        active = self.jobs.get(cancel.job_id)
        if active is None:
            error = ModelTrainerError(
                ModelTrainerErrorCode.JOB_NOT_FOUND,
                f"no queued or running job {cancel.job_id} to cancel",
            )
            state = self.state.get(cancel.job_id)
            if state is not None:
                error.details["status"] = str(state.status)
            bound.info("cancel for unknown or finished job")
            self._settle(record, [self._rejection(cancel.job_id, 0, error)])
            return
        self._settle(record, [])
        message = f"cancelled: {cancel.reason}" if cancel.reason else "cancelled"
        if active.status is JobStatus.QUEUED:
            self.queue.remove(cancel.job_id)
            error = ModelTrainerError(
                ModelTrainerErrorCode.TRAINING_CANCELLED, message, stage="prepare"
            )
            self._finish(active, failed_event(active.envelope(), error))
            return
        self.pool.request_stop(cancel.job_id, StopReason.CANCEL)
        active.kill_at = time.monotonic() + self.settings.cancel_grace_s
        bound.info("cancel requested", reason=cancel.reason)

    # ---------------------------------------------------------------- running

    def _dispatch(self) -> None:
        while self.queue and self.pool.idle() > 0 and not self._stopping:
            job = self.jobs[self.queue.popleft()]
            deadline = time.time() + job.job.timeout_s if job.job.timeout_s else None
            order = RunOrder(
                job_json=encode(job.job),
                attempt=job.attempt,
                queue=f"{job.record.topic}[{job.record.partition}]",
                data_root=self.settings.data_root.resolve(),
                artifacts_root=self.settings.artifacts_root.resolve(),
                checkpoint_every=job.job.training.checkpoint_every
                or self.settings.checkpoint_every,
                max_corpus_bytes=self.settings.max_corpus_bytes,
                deadline=deadline,
            )
            self.pool.run(job.job_id, order)
            job.status = JobStatus.RUNNING
            job.started_at = time.monotonic()
            self.publisher.publish([self._state_record(job, job.status)])
            log.info("job dispatched", job_id=job.job_id, attempt=job.attempt)
        self._update_gauges()

    def _state_record(self, job: ActiveJob, status: JobStatus) -> Outgoing:
        """The job's state record as of now (recorded locally too), for the caller to publish."""
        state = JobState(
            job_id=job.job_id,
            spec_digest=job.digest,
            status=status,
            attempt=job.attempt,
            last_seq=job.next_seq - 1,
        )
        self.state.put(state)
        return state.record(self.settings.state_topic)

    def _observed(self, job: ActiveJob, data: bytes) -> Event:
        """Decode an event from the job's worker and advance the job's seq past it."""
        event = decode_event(data).model_copy(update={"seq": job.next_seq})
        job.next_seq += 1
        return event

    async def _handle_pool(self) -> None:
        while True:
            message = await self.pool.messages.get()
            job = self.jobs.get(message.job_id) if message.job_id else None
            if job is None:
                continue
            if isinstance(message, JobEvent):
                self._on_event(job, message)
            elif isinstance(message, JobEnded):
                self._finish(job, self._observed(job, message.data))
            elif isinstance(message, JobPreempted):
                self._on_preempted(job, message)
            else:
                self._on_worker_died(job, message)
            self._dispatch()

    def _on_event(self, job: ActiveJob, message: JobEvent) -> None:
        event = self._observed(job, message.data)
        self.publisher.publish([self._event_record(event), self._state_record(job, job.status)])

    def _finish(self, job: ActiveJob, event: EventBase) -> None:
        """Publish the job's terminal event with its state and offset commit, atomically."""
        status = JobStatus.COMPLETED if isinstance(event, CompletedEventV1) else JobStatus.FAILED
        self._settle(job.record, [self._event_record(event), self._state_record(job, status)])
        self.jobs.pop(job.job_id, None)
        JOBS_FINISHED.labels(outcome=str(status)).inc()
        if job.started_at is not None:
            JOB_DURATION.observe(time.monotonic() - job.started_at)
        self._append_metrics(job, event)
        log.info("job finished", job_id=job.job_id, status=str(status), seq=event.seq)
        self._update_gauges()

    def _append_metrics(self, job: ActiveJob, event: EventBase) -> None:
        """Add the terminal event to the artifact's metrics.jsonl, when the job has a folder."""
        path = self.settings.artifacts_root / job.job_id / "metrics.jsonl"
        if path.parent.is_dir():
            with contextlib.suppress(OSError), path.open("ab") as out:
                out.write(encode(event) + b"\n")

    def _on_preempted(self, job: ActiveJob, message: JobPreempted) -> None:
        log.info("job preempted", job_id=job.job_id, step=message.step)
        self.jobs.pop(job.job_id, None)
        self._update_gauges()

    def _on_worker_died(self, job: ActiveJob, died: WorkerDied) -> None:
        if died.killed_by_pool:
            error = ModelTrainerError(
                ModelTrainerErrorCode.TRAINING_CANCELLED,
                f"cancelled; the job did not stop within {self.settings.cancel_grace_s}s and "
                "its worker was killed",
                stage="train",
            )
            self._finish(job, failed_event(job.envelope(), error))
            return
        if job.preempting:
            self.jobs.pop(job.job_id, None)
            return
        if job.attempt < self.settings.max_attempts:
            log.warning(
                "worker died; retrying the job from its checkpoint",
                job_id=job.job_id,
                exitcode=died.exitcode,
                attempt=job.attempt + 1,
            )
            job.attempt += 1
            job.status = JobStatus.QUEUED
            self.queue.appendleft(job.job_id)
            return
        error = ModelTrainerError(
            ModelTrainerErrorCode.RUN_WORKER_DIED,
            f"the worker running the job died (exit code {died.exitcode}) on attempt "
            f"{job.attempt} of {self.settings.max_attempts}",
            stage="train",
            details={"exitcode": died.exitcode, "attempt": job.attempt},
        )
        self._finish(job, failed_event(job.envelope(), error))

    # ---------------------------------------------------------------- rebalancing

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Hand back revoked partitions' jobs: queued ones drop, running ones checkpoint."""
        self.assigned -= revoked
        losing = [job for job in self.jobs.values() if job.record.tp in revoked]
        for job in losing:
            if job.status is JobStatus.QUEUED:
                self.queue.remove(job.job_id)
                self.jobs.pop(job.job_id, None)
            else:
                job.preempting = True
                self.pool.request_stop(job.job_id, StopReason.SHUTDOWN)
        budget = self.settings.rebalance_timeout_ms / 1000 * 0.8
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        await self._wait_for(lambda: all(job.job_id not in self.jobs for job in losing), budget)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.publisher.flush(), timeout=max(0.1, deadline - loop.time()))
        self.offsets.forget(list(revoked))
        if losing:
            log.info("partitions revoked; jobs handed back", jobs=[j.job_id for j in losing])
        self._update_gauges()

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned |= assigned
        await self.state.catch_up()
        log.info("partitions assigned", partitions=sorted(tp.partition for tp in assigned))

    # ---------------------------------------------------------------- housekeeping

    async def _housekeeping(self) -> None:
        last_lag = last_probe = 0.0
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            if now - last_probe > 5:
                last_probe = now
                self.broker_reachable = await self._probe_broker()
            for job in list(self.jobs.values()):
                if job.kill_at is not None and now > job.kill_at:
                    job.kill_at = None
                    log.warning("cancelled job did not stop; killing its worker", job_id=job.job_id)
                    self.pool.kill(job.job_id)
            self._dispatch()
            self._apply_backpressure()
            if now - last_lag > 10:
                last_lag = now
                await self._record_lag()

    async def _probe_broker(self) -> bool:
        """True when the broker answers a metadata request within three seconds."""
        consumer = self.consumer
        if consumer is None:
            return False
        try:
            async with asyncio.timeout(3):
                await consumer.topics()
        except Exception as exc:  # any failure means "not reachable now"
            if self.broker_reachable:
                log.warning("broker unreachable", error=repr(exc))
            return False
        return True

    async def _record_lag(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            with contextlib.suppress(Exception):
                position = await consumer.position(tp)
                if isinstance(highwater, int):
                    CONSUMER_LAG.labels(partition=str(tp.partition)).set(highwater - position)

    def _update_gauges(self) -> None:
        self._jobs_changed.set()
        running = sum(1 for j in self.jobs.values() if j.status is JobStatus.RUNNING)
        JOBS.labels(state="running").set(running)
        JOBS.labels(state="queued").set(len(self.queue))
