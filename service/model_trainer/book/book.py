"""The job book: every job's facts and every decision about it, in pure, synchronous code.

Inputs are method calls (a command consumed, a worker's message, a worker's death, partitions
revoked or assigned, a clock tick, a state record read back); each returns the effects for the
shell to carry out, in order: typed facts to publish in one transaction (events, states,
tombstones, dead letters, forwarded commands: the shell's wire module encodes them) with the
offsets that transaction commits (:class:`Publish`), and orders for the pool (:class:`Run`,
:class:`Stop`, :class:`Kill`). Time is passed in (``now``, wall-clock seconds) and never read
here. No asyncio, no aiokafka, no torch: a test drives the book through any interleaving in
microseconds.

The promise this module keeps:

* every accepted job reaches exactly one terminal event (completed or failed), published in
  the transaction that commits its command's offset;
* a partition's commit never passes a command whose job has not ended;
* the book alone numbers a job's events (``seq``), refusals included: +1 each, never reused;
* a job runs on at most one worker at a time, and a job handed back on revoke is never lost
  (its command stays uncommitted, so the partition's next owner resumes it);
* everything said of a job goes out through its commands partition (``Publish.via``), whose
  owner alone can commit it: an instance that lost the partition is fenced by Kafka;
* a command on a partition that does not hold its job is forwarded there, never run here;
* a command acts for the tenant whose topic it came on (a forwarded one, for the tenant it
  was forwarded from): no tenant cancels, reuses the id of, or builds on another's job;
* no command stops the book: whatever admitting or decoding one raises becomes its typed
  refusal;
* an ended job's state is deleted only once its submit's offset is committed.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from model_trainer_contracts import (
    CancelJobV1,
    CompletedEventV1,
    ConfigEventV1,
    DownloadEventV1,
    EventBase,
    FailedEventV1,
    JobStateV1,
    JobStatus,
    JobTokenizer,
    ModelTrainerError,
    ModelTrainerErrorCode,
    ProgressEventV1,
    QueuedEventV1,
    SubmitJobV1,
    decode_command,
    decode_event,
    encode,
    salvage_job_id,
    salvage_user_id,
)

from model_trainer.book.effects import (
    FORWARDED_FROM,
    FORWARDED_TENANT,
    DeadLetter,
    Effect,
    Fact,
    Forward,
    Kill,
    Policy,
    Publish,
    Run,
    Stop,
    Tombstone,
    request_digest,
)
from model_trainer.book.fairshare import Waiting, run_order
from model_trainer.book.jobs import Job, Killed, RunSlot
from model_trainer.book.lifecycle import RUNS, State
from model_trainer.book.offsets import OffsetTracker
from model_trainer.book.records import TP, Record
from model_trainer.core.envelope import Envelope, failed_event
from model_trainer.core.stop import StopReason
from model_trainer.core.tenancy import Tenancy, tenant_root, tenant_url
from model_trainer.pool.protocol import (
    JobEvent,
    JobPreempted,
    RunOrder,
    RunReport,
    RunStarted,
    WorkerDied,
)

log = structlog.get_logger(__name__)
_C = ModelTrainerErrorCode
EXPIRY_EVERY_S = 60.0
Admit = Callable[[SubmitJobV1], None]


def _time(now: float) -> datetime:
    """Wall-clock seconds as an aware datetime (for the state record)."""
    return datetime.fromtimestamp(now, UTC)


@dataclass
class JobBook:
    """See the module docstring. ``admit`` raises the typed refusal of a job that cannot run."""

    policy: Policy
    admit: Admit
    # Whether the publisher is behind (the broker away): progress is then held, latest
    # values winning, so what waits in memory stays bounded however long the outage.
    behind: Callable[[], bool] = field(default=lambda: False)
    jobs: dict[str, Job] = field(default_factory=dict)
    states: dict[str, JobStateV1] = field(default_factory=dict)
    # The state topic as read (committed only): what a released partition's jobs go back to,
    # since what this book wrote for them may have been dropped uncommitted with it.
    read: dict[str, JobStateV1] = field(default_factory=dict)
    queue: deque[str] = field(default_factory=deque)
    runs: dict[str, RunSlot] = field(default_factory=dict)  # by job_id
    offsets: OffsetTracker = field(default_factory=OffsetTracker)
    assigned: set[TP] = field(default_factory=set)
    last_served: dict[int, int] = field(default_factory=dict)  # user -> dispatch count
    expired_at: float = 0.0  # when ended jobs' states were last looked at for expiry
    dispatched: int = 0
    releasing: set[TP] = field(default_factory=set)
    stopping: bool = False
    # Kafka's default partitioner (key, partition count) and the commands topic's partition
    # count: where a job with no known state lives. 0: unknown, only known states decide.
    partitioner: Callable[[bytes, int], int] | None = None
    partition_count: int = 0
    committed: dict[TP, int] = field(default_factory=dict)  # commit position per partition
    partition_counts: dict[str, int] = field(default_factory=dict)  # by topic; else the above
    tenancy: Tenancy = field(init=False)

    def __post_init__(self) -> None:
        policy = self.policy
        self.tenancy = Tenancy(policy.commands_topic, policy.tenants, policy.admin_tenant)

    # -------------------------------------------------------------------- views

    def free_slots(self) -> int:
        return max(0, self.policy.slots - sum(slot.processes for slot in self.runs.values()))

    def queued(self) -> int:
        return len(self.queue)

    def running(self) -> list[str]:
        return [j.job_id for j in self.jobs.values() if j.state in RUNS]

    def handing_back(self, tps: Iterable[TP] | None = None) -> bool:
        """Whether a run of a job on ``tps`` (default: any) is still going."""
        wanted = None if tps is None else set(tps)
        return any(
            (wanted is None or job.record in wanted) and job.state in RUNS
            for job in self.jobs.values()
        ) or (wanted is None and bool(self.runs))

    # -------------------------------------------------------------------- state topic

    def load(self, state: JobStateV1) -> None:
        """A state record read from the topic (replay at start, or another instance's).

        Kept in ``read`` even for a job this book runs: once it loses the job (a revoke, a
        fence), what its new owner wrote meanwhile is what it knows (see ``release``)."""
        self.read[state.job_id] = state
        if state.job_id in self.jobs:
            return  # ours, and newer than anything on the topic
        known = self.states.get(state.job_id)
        if known is not None and known.status.terminal and not state.status.terminal:
            return
        if known is not None and known.last_seq > state.last_seq and not state.status.terminal:
            return
        self.states[state.job_id] = state

    def unsure(self, tps: Iterable[TP]) -> dict[str, float]:
        """Jobs of ``tps`` whose state says running and that no run here has: their state
        record may be older than their last event (see ``Policy.state_every_s``). Maps each
        to its record's time, from which :meth:`published` wants the events topic read."""
        wanted = set(tps)
        return {
            state.job_id: state.updated_at.timestamp()
            for state in self.states.values()
            if state.status is JobStatus.RUNNING
            and self._state_tp(state) in wanted
            and state.job_id not in self.jobs
        }

    def published(self, last_seqs: Mapping[str, int]) -> None:
        """The highest seq found on the events topic of jobs :meth:`unsure` named."""
        for job_id, last_seq in last_seqs.items():
            known = self.states.get(job_id)
            if known is not None and job_id not in self.jobs and last_seq > known.last_seq:
                log.info("seq read back", job_id=job_id, state=known.last_seq, events=last_seq)
                self.states[job_id] = known.model_copy(update={"last_seq": last_seq})

    def forget(self, job_id: str) -> None:
        """A tombstone read from the topic: the ended job's state was deleted."""
        self.read.pop(job_id, None)
        if job_id not in self.jobs:
            self.states.pop(job_id, None)

    def _state(
        self, job: Job, status: JobStatus, now: float, code: str | None = None
    ) -> JobStateV1:
        state = JobStateV1(
            job_id=job.job_id,
            user_id=job.spec.user_id,
            labels=dict(job.spec.labels),
            tenant=job.tenant,
            status=status,
            request_digest=job.digest,
            partition=job.record.partition,
            offset=job.offset,
            attempt=job.attempt,
            failures=job.failures,
            last_seq=job.next_seq - 1,
            error_code=code,
            submitted_at=_time(job.submitted_at),
            updated_at=_time(now),
        )
        self.states[job.job_id] = state
        job.state_at = now
        return state

    # -------------------------------------------------------------------- commands

    def command(self, record: Record, now: float, admit: Admit | None = None) -> list[Effect]:
        """A record from the commands topic. ``admit`` stands in for the book's own admission
        of this one command (the shell checks a job's files off the event loop first)."""
        self.offsets.add(record.tp, record.offset)
        owner, origin = self.tenancy.tenant_of(record.topic), self._origin(record)
        if owner is None or origin is None:
            stranger = ModelTrainerError(
                _C.COMMAND_INVALID, f"{record.topic} is not a tenant's commands topic"
            )
            return self._dead_letter(record, stranger, None, now)
        try:
            command = decode_command(record.value, max_bytes=self.policy.max_command_bytes)
        except Exception as exc:  # any decoder failure refuses this record, never the book
            undecodable = (
                exc
                if isinstance(exc, ModelTrainerError)
                else ModelTrainerError(_C.COMMAND_UNDECODABLE, f"undecodable: {exc!r}"[:500])
            )
            job_id = salvage_job_id(record.value)
            keyed = job_id is not None and record.key == job_id.encode()
            return self._dead_letter(record, undecodable, job_id if keyed else None, now)
        if record.key != command.job_id.encode():
            # Another partition may own this job_id: answering with an event here could
            # reuse a seq that its owner hands out, so the dead letter is the answer.
            wrong_key = ModelTrainerError(
                _C.COMMAND_INVALID,
                f"the record key must be the job_id {command.job_id!r}; it was "
                f"{record.key.decode(errors='replace') if record.key else 'null'}",
                details={"violations": [{"field": "(key)", "error": "must equal job_id"}]},
            )
            return self._dead_letter(record, wrong_key, None, now)
        home = self.home(command.job_id, record.topic)
        if home is not None and home != record.tp:
            return self._misplaced(record, command.job_id, home, origin, now)
        if isinstance(command, SubmitJobV1):
            if origin != owner:
                return self._foreign_submit(command, record, now)
            return self._submit(command, record, owner, now, admit or self.admit)
        return self._cancel(command, record, origin, owner, now)

    def tenant_of(self, topic: str) -> str | None:
        """The tenant whose commands topic ``topic`` is (the shell roots its files there)."""
        return self.tenancy.tenant_of(topic)

    def _origin(self, record: Record) -> str | None:
        """The tenant a command acts for: its topic's, or the one it was forwarded from. A
        header can be forged only on the writer's own topic, where it can but lower the
        writer's rights (its jobs are the topic's), so trusting it there gives nothing away."""
        headers = dict(record.headers)
        moved = headers.get(FORWARDED_TENANT)
        if FORWARDED_FROM in headers and moved is not None:
            name = moved.decode(errors="replace")
            return name if self.tenancy.topic(name) in self.tenancy.topics() else None
        return self.tenancy.tenant_of(record.topic)

    def _state_tp(self, state: JobStateV1) -> TP:
        """The commands partition a state record speaks for."""
        return TP(self.tenancy.topic(state.tenant), state.partition)

    def refuse(self, record: Record, error: ModelTrainerError, now: float) -> list[Effect]:
        """Dead-letter ``record`` unhandled: it killed the service once, or handling it raised.
        Its offset is settled, so it is never read again: a job that ran before from this
        record (its state still says so) ends with the refusal, or it would never end."""
        self.offsets.add(record.tp, record.offset)
        letter = self._dead_letter(record, error, None, now)
        job_id = salvage_job_id(record.value)
        state = self.states.get(job_id) if job_id is not None else None
        if (
            job_id is None
            or state is None
            or job_id in self.jobs
            or state.status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.REJECTED)
            or self._state_tp(state) != record.tp
            or record.key != job_id.encode()
        ):
            return letter
        envelope = Envelope(
            job_id=job_id,
            user_id=state.user_id,
            seq=state.last_seq + 1,
            attempt=max(1, state.attempt),
            labels=dict(state.labels),
        )
        event = failed_event(envelope, error)
        final = state.model_copy(
            update={
                "status": JobStatus.FAILED,
                "last_seq": event.seq,
                "error_code": str(error.code),
                "updated_at": _time(now),
            }
        )
        self.states[job_id] = final
        log.info("job ended with its refused command", job_id=job_id, seq=event.seq)
        return [
            dataclasses.replace(
                publish,
                facts=(*publish.facts, event, final),
                ended=job_id,
            )
            for publish in letter
            if isinstance(publish, Publish)
        ]

    def home(self, job_id: str, topic: str) -> TP | None:
        """The commands partition that holds ``job_id``: its job's or its state's (on its
        tenant's topic), else where Kafka's default partitioner puts its key on ``topic``, the
        topic the command came on (None while that topic's partition count is unknown)."""
        job = self.jobs.get(job_id)
        if job is not None:
            return job.record
        state = self.states.get(job_id)
        if state is not None and state.partition >= 0:
            return self._state_tp(state)
        count = self.partition_counts.get(topic, self.partition_count)
        if self.partitioner is None or count < 1:
            return None
        return TP(topic, self.partitioner(job_id.encode(), count))

    def admits(self, record: Record) -> SubmitJobV1 | None:
        """The submit in ``record`` if :meth:`command` would admit it (a new job, on its
        partition): the shell checks its files off the event loop, then hands the verdict in."""
        try:
            command = decode_command(record.value, max_bytes=self.policy.max_command_bytes)
        except Exception:  # refused by command() itself
            return None
        if not isinstance(command, SubmitJobV1) or record.key != command.job_id.encode():
            return None
        if self.home(command.job_id, record.topic) not in (None, record.tp):
            return None
        if self._origin(record) != self.tenancy.tenant_of(record.topic):
            return None
        state = self.states.get(command.job_id)
        if command.job_id in self.jobs or (state is not None and state.status.terminal):
            return None
        if state is not None and state.request_digest not in ("", request_digest(command)):
            return None
        return command

    def _misplaced(
        self, record: Record, job_id: str, home: TP, tenant: str, now: float
    ) -> list[Effect]:
        """A command on a partition that does not hold its job (clients' partitioners differ;
        added partitions move keys; another tenant's job): forwarded to ``home`` in the
        transaction that commits it here, so the job's owner alone acts on it (and answers
        another tenant's command with the refusal, under the job's own seq). It carries the
        ``tenant`` it acts for. Forwarded once: a second miss is refused."""
        if any(name == FORWARDED_FROM for name, _ in record.headers):
            error = ModelTrainerError(
                _C.JOB_ON_OTHER_PARTITION,
                f"job {job_id!r} lives on partition {home.partition} of {home.topic}, and this "
                f"command was already forwarded once; produce it keyed by job_id",
                details={"partition": home.partition, "received_on": record.partition},
            )
            return self._dead_letter(record, error, None, now)
        acts_for = tenant if tenant != self.tenancy.tenant_of(home.topic) else None
        moved = Forward(record, home, acts_for)
        log.info(
            "command forwarded to its job's partition",
            job_id=job_id,
            partition=record.partition,
            to=home.partition,
            topic=home.topic,
            offset=record.offset,
        )
        return [self._settle(record, [moved])]

    def _settle(self, record: Record, facts: list[Fact]) -> Publish:
        """Publish ``facts`` with the commit of every offset this record's end unblocks."""
        return Publish(record.tp, tuple(facts), self._commit(record.tp, record.offset))

    def _commit(self, tp: TP, offset: int) -> dict[TP, int]:
        """The commit that finishing ``offset`` unblocks (none, or one for ``tp``)."""
        committable = self.offsets.finish(tp, offset)
        if committable is None:
            return {}
        self.committed[tp] = max(committable, self.committed.get(tp, 0))
        return {tp: committable}

    def _rejection(
        self, job_id: str, user_id: int, error: ModelTrainerError, now: float, tp: TP
    ) -> list[Fact]:
        """A failed event answering a refused command (it ends no job), and its state."""
        error.details.setdefault("command_rejected", True)
        job = self.jobs.get(job_id)
        if job is not None:
            event = failed_event(job.envelope(), error)
            status = JobStatus.RUNNING if job.state in RUNS else JobStatus.QUEUED
            return [event, self._state(job, status, now)]
        known = self.states.get(job_id)
        seq = known.last_seq + 1 if known is not None else 0
        envelope = Envelope(job_id=job_id, user_id=user_id, seq=seq, attempt=1, labels={})
        event = failed_event(envelope, error)
        if known is not None:
            state = known.model_copy(update={"last_seq": seq, "updated_at": _time(now)})
        else:
            state = JobStateV1(
                job_id=job_id,
                user_id=user_id,
                tenant=self.tenancy.tenant_of(tp.topic) or "default",
                status=JobStatus.REJECTED,
                request_digest="",
                partition=tp.partition,
                error_code=str(error.code),
                error_message=error.message,
                last_seq=seq,
                submitted_at=_time(now),
                updated_at=_time(now),
            )
        self.states[job_id] = state
        return [event, state]

    def _dead_letter(
        self, record: Record, error: ModelTrainerError, job_id: str | None, now: float
    ) -> list[Effect]:
        facts: list[Fact] = [DeadLetter(record, error)]
        if job_id is not None:
            user = salvage_user_id(record.value)
            facts += self._rejection(job_id, user, error, now, record.tp)
        log.info(
            "command dead-lettered",
            code=str(error.code),
            error=error.message[:300],
            job_id=job_id,
            offset=record.offset,
        )
        return [self._settle(record, facts)]

    def _foreign_submit(self, spec: SubmitJobV1, record: Record, now: float) -> list[Effect]:
        """Another tenant's submit forwarded to the partition of a job with its id: refused,
        whatever its spec, so it can neither settle as a duplicate nor run in the folder of
        this tenant's job."""
        log.info("job_id held by another tenant", job_id=spec.job_id)
        error = ModelTrainerError(
            _C.JOB_ID_CONFLICT,
            f"job {spec.job_id} belongs to another tenant; choose another job_id",
            details={"request_digest": request_digest(spec), "other_tenant": True},
        )
        answer = self._rejection(spec.job_id, spec.user_id, error, now, record.tp)
        return [self._settle(record, answer)]

    def _check_references(self, spec: SubmitJobV1, tenant: str) -> None:
        """JOB_FORBIDDEN for a job that builds on (init_from, a job's tokenizer) a job of
        another tenant, as far as this book knows it; the tenant's own artifacts folder,
        which admission looks in, holds no other tenant's anyway."""
        tok = spec.tokenizer
        for ref in (spec.init_from, tok.job_id if isinstance(tok, JobTokenizer) else None):
            job = self.jobs.get(ref) if ref is not None else None
            state = self.states.get(ref) if ref is not None else None
            owner = job.tenant if job is not None else state.tenant if state else None
            if owner is not None and owner != tenant:
                raise ModelTrainerError(
                    _C.JOB_FORBIDDEN,
                    f"job {ref!r} belongs to another tenant; its artifact is not shared",
                    details={"job_id": ref},
                )

    def _submit(
        self, spec: SubmitJobV1, record: Record, tenant: str, now: float, admit: Admit
    ) -> list[Effect]:
        bound = log.bind(job_id=spec.job_id)
        digest = request_digest(spec)
        active = self.jobs.get(spec.job_id)
        state = self.states.get(spec.job_id)
        known = active.digest if active else (state.request_digest if state else "")
        if known and known != digest:
            bound.info("job_id reused with a different spec")
            error = ModelTrainerError(
                _C.JOB_ID_CONFLICT,
                f"job {spec.job_id} was already submitted with a different spec",
                details={"request_digest": digest, "existing_request_digest": known},
            )
            answer = self._rejection(spec.job_id, spec.user_id, error, now, record.tp)
            return [self._settle(record, answer)]
        if active is not None or (state is not None and state.status.terminal):
            bound.info("duplicate submit settled", status=str(state.status) if state else "active")
            return [self._settle(record, [])]
        resumed = state is not None and state.status is not JobStatus.REJECTED
        job = Job(
            spec=spec,
            digest=digest,
            record=record.tp,
            offset=record.offset,
            submitted_at=state.submitted_at.timestamp() if state and resumed else now,
            attempt=state.attempt if state else 0,
            failures=state.failures if state else 0,
            next_seq=state.last_seq + 1 if state else 0,
            tenant=tenant,
        )
        try:
            self._check_references(spec, tenant)
            admit(spec)
        except Exception as exc:  # whatever admission raises refuses this job, never the book
            error = exc if isinstance(exc, ModelTrainerError) else _admission_failed(exc)
            bound.info("job refused", code=str(error.code), error=error.message)
            self.jobs[spec.job_id] = job
            return self._end(job, failed_event(job.envelope(), error), now)
        self.jobs[spec.job_id] = job
        bound.info("job accepted", attempt=job.attempt, queued=len(self.queue))
        reason = "preempted" if resumed else "submitted"
        return [*self._enqueue(job, reason, now, first=False), *self._dispatch(now)]

    def _enqueue(self, job: Job, reason: str, now: float, *, first: bool) -> list[Effect]:
        """Queue the job (at the front when ``first``); its queued event and state go out,
        after what its last run said and was held (so the state's last_seq covers it)."""
        effects = self._flush_held(job, now)
        job.move(State.QUEUED)
        if first:
            self.queue.appendleft(job.job_id)
        else:
            self.queue.append(job.job_id)
        envelope = job.envelope()
        envelope["attempt"] = job.attempt + 1  # the run it waits for
        event = QueuedEventV1(
            **envelope,
            position=[w.job_id for w in self._waiting()].index(job.job_id),
            queue=f"{job.record.topic}[{job.record.partition}]",
            reason=reason,
        )
        facts = (event, self._state(job, JobStatus.QUEUED, now))
        return [*effects, Publish(job.record, facts, {})]

    def _cancel(
        self, cancel: CancelJobV1, record: Record, tenant: str, owner: str, now: float
    ) -> list[Effect]:
        """``tenant`` sent the cancel; ``owner``'s topic holds the job (or would)."""
        bound = log.bind(job_id=cancel.job_id)
        if not self.tenancy.may_cancel(tenant, owner):
            bound.info("cancel of another tenant's job refused")
            error = ModelTrainerError(
                _C.JOB_FORBIDDEN, f"job {cancel.job_id} belongs to another tenant"
            )
            answer = self._rejection(cancel.job_id, 0, error, now, record.tp)
            return [self._settle(record, answer)]
        job = self.jobs.get(cancel.job_id)
        if job is None:
            state = self.states.get(cancel.job_id)
            error = ModelTrainerError(
                _C.JOB_NOT_FOUND, f"no queued or running job {cancel.job_id} to cancel"
            )
            if state is not None and state.status is not JobStatus.REJECTED:
                error.details["status"] = str(state.status)
            bound.info("cancel for an unknown or ended job")
            answer = self._rejection(cancel.job_id, 0, error, now, record.tp)
            return [self._settle(record, answer)]
        # The cancel's own offset may be committed now: the submit's, older, holds the
        # partition's commit back until the job ends, so a crash redelivers both.
        effects: list[Effect] = [self._settle(record, [])]
        job.cancel_reason = cancel.reason
        if job.state is State.QUEUED:
            self.queue.remove(job.job_id)
            return effects + self._end(job, self._cancelled(job, "prepare"), now)
        bound.info("cancel requested", reason=cancel.reason)
        if job.state is State.RUNNING:  # one handing back was asked to stop already
            job.kill_at = now + self.policy.cancel_grace_s
            effects.append(Stop(job.job_id, StopReason.CANCEL))
        if job.state is not State.CANCELLING:  # a second cancel changes only the reason
            job.move(State.CANCELLING)
        return effects

    def _cancelled(self, job: Job, stage: str, *, killed: bool = False) -> FailedEventV1:
        reason = job.cancel_reason
        message = f"cancelled: {reason}" if reason else "cancelled"
        if killed:
            message += (
                f" (the run did not stop within {self.policy.cancel_grace_s:g}s and was killed)"
            )
        error = ModelTrainerError(
            _C.TRAINING_CANCELLED, message, stage="prepare" if stage == "prepare" else "train"
        )
        return failed_event(job.envelope(), error)

    # -------------------------------------------------------------------- running

    def _dispatch(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        while self.free_slots() > 0 and not self.stopping:
            ready = self._next_ready(now)
            if ready is None:
                break
            processes = self.jobs[ready].spec.resources.processes
            if processes > self.free_slots():
                break  # the next in turn waits for its slots: none overtakes it
            self.queue.remove(ready)
            job = self.jobs[ready]
            self.dispatched += 1
            self.last_served[job.spec.user_id] = self.dispatched
            job.attempt += 1
            job.move(State.RUNNING)
            job.last_heard, job.held = None, None
            job.kill_at = None
            timeout = job.spec.timeout_s or self.policy.default_timeout_s
            job.deadline = now + timeout if timeout is not None else None
            order = RunOrder(
                job_json=encode(job.spec),
                attempt=job.attempt,
                queue=f"{job.record.topic}[{job.record.partition}]",
                data_root=self.policy.data_root,
                artifacts_root=tenant_root(self.policy.artifacts_root, job.tenant),
                checkpoint_every=job.spec.training.checkpoint_every or self.policy.checkpoint_every,
                max_corpus_bytes=self.policy.max_corpus_bytes,
                deadline=job.deadline,
                artifacts_url=tenant_url(self.policy.artifacts_url, job.tenant),
                storage_retry_s=self.policy.storage_retry_s,
                processes=processes,
            )
            self.runs[job.job_id] = RunSlot(job.job_id, job.attempt, processes=processes)
            effects.append(Run(job.job_id, order))
            effects.append(Publish(job.record, (self._state(job, JobStatus.RUNNING, now),), {}))
            log.info("job dispatched", job_id=job.job_id, attempt=job.attempt)
        return effects

    def _waiting(self) -> list[Waiting]:
        """The queue in the order it runs (users take turns, priority within a user)."""
        queued = [self.jobs[job_id].spec for job_id in self.queue]
        waiting = [Waiting(spec.job_id, spec.user_id, spec.priority) for spec in queued]
        return run_order(waiting, self.last_served)

    def _next_ready(self, now: float) -> str | None:
        """The next job to run: not still dying from an earlier run (a job never runs twice
        at once), not waiting for disk space, and of a user under the per-user limit of
        running jobs."""
        limit = self.policy.max_running_per_user
        running: dict[int, int] = {}
        for slot in self.runs.values():
            owner = self.jobs.get(slot.job_id)
            if owner is not None:
                running[owner.spec.user_id] = running.get(owner.spec.user_id, 0) + 1
        for waiting in self._waiting():
            if waiting.job_id in self.runs:
                continue
            not_before = self.jobs[waiting.job_id].not_before
            if not_before is not None and now < not_before:
                continue
            if limit is not None and running.get(waiting.user_id, 0) >= limit:
                continue
            return waiting.job_id
        return None

    def _current(self, job_id: str, attempt: int) -> Job | None:
        """The job whose current run sent this message, or None for a stale message."""
        job = self.jobs.get(job_id)
        if job is None or job.state not in RUNS or job.attempt != attempt:
            return None
        return job

    def _stamp(self, job: Job, event: EventBase) -> EventBase:
        envelope = job.envelope()
        return event.model_copy(update={"seq": envelope["seq"], "attempt": envelope["attempt"]})

    def report(self, report: RunReport, now: float) -> list[Effect]:
        """What the pool says of a run: an event, its end, its stop, or its worker's death."""
        if isinstance(report, RunStarted):
            job = self._current(report.job_id, report.attempt)
            if job is not None:
                job.last_heard = now  # the stall clock starts when a worker has the run
            return []
        if isinstance(report, WorkerDied):
            return self.died(report.job_id, report.attempt, report.exitcode, now)
        if isinstance(report, JobPreempted):
            return self.preempted(report.job_id, report.attempt, report.step, now)
        try:
            event = decode_event(report.data)
        except ModelTrainerError as exc:
            log.error("undecodable event from a worker", job_id=report.job_id, error=exc.message)
            return []
        if isinstance(report, JobEvent):
            return self.progress(report.job_id, report.attempt, event, now)
        return self.ended(report.job_id, report.attempt, event, now)

    def progress(self, job_id: str, attempt: int, event: EventBase, now: float) -> list[Effect]:
        """A config, progress or download event from the job's worker."""
        job = self._current(job_id, attempt)
        if job is None or not isinstance(event, ConfigEventV1 | ProgressEventV1 | DownloadEventV1):
            return []
        job.last_heard = now
        if isinstance(event, DownloadEventV1):  # the worker spaces them out already
            return self._publish_progress(job, event, now)
        if isinstance(event, ProgressEventV1) and self._too_soon(job, now):
            # Coalesced: the latest values win; an evaluation waits apart, so a plain step
            # never replaces it, and the last of each always goes out.
            if event.val_loss is None:
                job.held = event
            else:
                job.held_eval = event
            return []
        effects: list[Effect] = []
        held = job.held_eval
        if isinstance(event, ProgressEventV1) and held is not None and held.step <= event.step:
            if event.val_loss is None:  # steps go out in order
                effects += self._publish_progress(job, held, now)
            else:  # a newer evaluation: the held one is coalesced into it
                job.held_eval = None
        return effects + self._publish_progress(job, event, now)

    def _flush_held(self, job: Job, now: float) -> list[Effect]:
        """What the job's run said and was held: its evaluation, then a later step."""
        effects: list[Effect] = []
        held, job.held = job.held, None
        evaluated = job.held_eval
        if evaluated is not None:
            effects += self._publish_progress(job, evaluated, now)
        if held is not None and (evaluated is None or held.step > evaluated.step):
            effects += self._publish_progress(job, held, now)
        return effects

    def _too_soon(self, job: Job, now: float) -> bool:
        last = job.last_progress_at
        return self.behind() or (
            last is not None and now - last < 1.0 / self.policy.max_progress_per_s
        )

    def _publish_progress(
        self, job: Job, event: ConfigEventV1 | ProgressEventV1 | DownloadEventV1, now: float
    ) -> list[Effect]:
        if (
            job.held is not None
            and isinstance(event, ProgressEventV1)
            and job.held.step <= event.step
        ):
            job.held = None  # superseded
        if event is job.held_eval:
            job.held_eval = None
        if isinstance(event, ProgressEventV1):
            job.last_progress_at = now
        stamped = self._stamp(job, event)
        facts: list[Fact] = [stamped]
        if job.state_at is None or now - job.state_at >= self.policy.state_every_s:
            facts.append(self._state(job, JobStatus.RUNNING, now))
        return [Publish(job.record, tuple(facts), {})]

    def ended(self, job_id: str, attempt: int, event: EventBase, now: float) -> list[Effect]:
        """The run's terminal event (completed, or a failure the worker decided)."""
        self._free(job_id, attempt)
        job = self._current(job_id, attempt)
        if job is None:
            return self._dispatch(now)
        effects = self._flush_held(job, now)  # the run's last progress goes out before its end
        if isinstance(event, FailedEventV1) and event.code is _C.DISK_FULL:
            return effects + self._disk_full(job, event, now)
        if isinstance(event, CompletedEventV1 | FailedEventV1):
            final = self._stamp(job, _with_cancel_reason(event, job.cancel_reason))
        else:
            error = ModelTrainerError(_C.INTERNAL_ERROR, f"the worker ended with a {event.type}")
            final = failed_event(job.envelope(), error)
        return effects + self._end(job, final, now)

    def preempted(self, job_id: str, attempt: int, step: int, now: float) -> list[Effect]:
        """The run checkpointed at ``step`` and stopped without a terminal event."""
        self._free(job_id, attempt)
        job = self._current(job_id, attempt)
        if job is None:
            return self._dispatch(now)
        log.info("job handed back", job_id=job_id, step=step)
        return self._run_over(job, now)

    def _disk_full(self, job: Job, event: FailedEventV1, now: float) -> list[Effect]:
        """The run met a full disk: not the job's fault, so no failure is counted and no
        terminal event goes out (which would release its checkpoints). The job is handed back,
        to wait ``disk_full_retry_s`` in the queue and then resume from its last good
        checkpoint; a cancel still ends it, a revoke still leaves it to the next owner, and a
        run stopped at its deadline (whose last checkpoint found the disk full) still times
        out."""
        if job.deadline is not None and now >= job.deadline and job.state is not State.CANCELLING:
            timeout = job.spec.timeout_s or self.policy.default_timeout_s or 0.0
            error = ModelTrainerError(
                _C.TRAINING_TIMEOUT,
                f"the run passed its timeout of {timeout:g}s (its last checkpoint met a full disk)",
                stage="train",
            )
            return self._end(job, failed_event(job.envelope(), error), now)
        wait = self.policy.disk_full_retry_s
        log.warning(
            "disk full; job handed back", job_id=job.job_id, wait_s=wait, error=event.message
        )
        job.not_before = now + wait
        leaving = job.record not in self.assigned or job.record in self.releasing
        if job.state is State.CANCELLING or leaving or self.stopping:
            return self._run_over(job, now)  # cancelled, or left to the next owner
        return [*self._enqueue(job, "retry", now, first=True), *self._dispatch(now)]

    def died(self, job_id: str, attempt: int, exitcode: int | None, now: float) -> list[Effect]:
        """The worker running this run exited without reporting its end."""
        slot = self.runs.get(job_id)
        killed = slot.killed if slot is not None and slot.attempt == attempt else None
        self._free(job_id, attempt)
        job = self._current(job_id, attempt)
        if job is None:
            return self._dispatch(now)
        bound = log.bind(job_id=job_id, attempt=attempt, exitcode=exitcode)
        if job.state is State.CANCELLING:
            bound.info("cancelled job's worker died")
            return self._end(job, self._cancelled(job, "train", killed=True), now)
        if job.state is State.HANDING_BACK:
            return self._run_over(job, now)  # preemption: free, never a failure
        job.failures += 1
        stalled = killed is Killed.STALL
        if job.failures < self.policy.max_attempts:
            bound.warning(
                "run stalled; retrying from the checkpoint"
                if stalled
                else "worker died; retrying the job from its checkpoint",
                failures=job.failures,
            )
            return [*self._enqueue(job, "retry", now, first=True), *self._dispatch(now)]
        if stalled:
            error = ModelTrainerError(
                _C.TRAINING_STALLED,
                f"the run sent nothing for {self._stall_timeout(job):g}s and was killed, "
                f"{job.failures} of {self.policy.max_attempts} times",
                stage="train",
                details={"failures": job.failures, "stall_timeout_s": self._stall_timeout(job)},
            )
        else:
            error = ModelTrainerError(
                _C.RUN_WORKER_DIED,
                f"the worker running the job died (exit code {exitcode}); "
                f"{job.failures} of {self.policy.max_attempts} failures allowed",
                stage="train",
                details={"exitcode": exitcode, "failures": job.failures},
            )
        return self._end(job, failed_event(job.envelope(), error), now)

    def _free(self, job_id: str, attempt: int) -> None:
        """The run's slot is free (a late word from an older attempt frees nothing)."""
        slot = self.runs.get(job_id)
        if slot is not None and slot.attempt == attempt:
            del self.runs[job_id]

    def _run_over(self, job: Job, now: float) -> list[Effect]:
        """A run stopped without ending its job: hand the job back, or run it again."""
        if job.state is State.CANCELLING:
            return self._end(job, self._cancelled(job, "train"), now)
        if job.record in self.assigned and job.record not in self.releasing and not self.stopping:
            return [*self._enqueue(job, "preempted", now, first=True), *self._dispatch(now)]
        self._leave(job)
        return self._dispatch(now)

    def _leave(self, job: Job) -> None:
        """The job leaves the book unended: its command stays uncommitted, so the partition's
        next owner (or this instance, restarted) runs it."""
        job.move(State.LEFT)
        del self.jobs[job.job_id]

    def _end(self, job: Job, event: EventBase, now: float) -> list[Effect]:
        """Publish the job's terminal event with its state and its offset's commit."""
        if isinstance(event, FailedEventV1):
            status, code = JobStatus.FAILED, str(event.code)
        else:
            status, code = JobStatus.COMPLETED, None
        facts = (event, self._state(job, status, now, code))
        job.move(State.ENDED)
        del self.jobs[job.job_id]  # a queued job left the queue before it ends
        commits = self._commit(job.record, job.offset)
        log.info("job ended", job_id=job.job_id, status=str(status), seq=event.seq)
        ended = Publish(job.record, facts, commits, job.job_id)
        return [ended, *self._dispatch(now)]

    def _timed_out(self, job: Job) -> FailedEventV1:
        timeout = job.spec.timeout_s or self.policy.default_timeout_s or 0.0
        error = ModelTrainerError(
            _C.TRAINING_TIMEOUT,
            f"the run passed its timeout of {timeout:g}s and did not stop within "
            f"{self.policy.cancel_grace_s:g}s; it was killed",
            stage="train",
        )
        return failed_event(job.envelope(), error)

    def _stall_timeout(self, job: Job) -> float:
        return job.spec.stall_timeout_s or self.policy.stall_timeout_s

    # -------------------------------------------------------------------- the clock

    def tick(self, now: float) -> list[Effect]:
        """Kill runs past their grace, deadline or silence; start what can start."""
        effects: list[Effect] = []
        for job in list(self.jobs.values()):
            held = job.held is not None or job.held_eval is not None
            if held and job.state in RUNS and not self._too_soon(job, now):
                effects += self._flush_held(job, now)
            slot = self.runs.get(job.job_id)
            if job.state not in RUNS or slot is None or slot.killed is not None:
                continue
            why: Killed | None = None
            if job.kill_at is not None and now >= job.kill_at:
                why = Killed.CANCEL if job.state is State.CANCELLING else Killed.HANDBACK
            elif job.deadline is not None and now >= job.deadline + self.policy.cancel_grace_s:
                why = Killed.TIMEOUT
            elif job.last_heard is not None and now - job.last_heard >= self._stall_timeout(job):
                why = Killed.STALL
            if why is None:
                continue
            slot.killed = why
            log.warning("killing a run", job_id=job.job_id, attempt=job.attempt, why=str(why))
            effects.append(Kill(job.job_id, job.attempt))
            if why is Killed.CANCEL:  # answered now: the death only frees the worker
                effects += self._end(job, self._cancelled(job, "train", killed=True), now)
            elif why is Killed.TIMEOUT:
                effects += self._end(job, self._timed_out(job), now)
        if now - self.expired_at >= EXPIRY_EVERY_S:
            effects += self._expire(now)
        return effects + self._dispatch(now)

    def _expire(self, now: float) -> list[Effect]:
        """Tombstone the state records of jobs that ended more than the retention ago, on
        the partitions this instance owns (so each is deleted once, by its owner), and only
        once the partition's commit has passed the job's submit: a submit still uncommitted
        (behind a longer job) would otherwise run its job again after a restart."""
        self.expired_at = now
        owned = {tp for tp in self.assigned if tp not in self.releasing}
        if not owned:
            return []
        cutoff = now - self.policy.state_retention_s
        done = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.REJECTED)
        by_partition: dict[TP, list[str]] = {}
        for state in self.states.values():
            via = self._state_tp(state) if state.partition >= 0 else min(owned)
            if (
                via not in owned
                or state.status not in done
                or state.updated_at.timestamp() >= cutoff
                or state.job_id in self.jobs
                or (state.offset is not None and state.offset >= self.committed.get(via, 0))
            ):
                continue
            by_partition.setdefault(via, []).append(state.job_id)
        effects: list[Effect] = []
        for via, expired in sorted(by_partition.items()):
            for job_id in expired:
                del self.states[job_id]
            tombstones = [Tombstone(job_id) for job_id in expired]
            log.info("ended jobs' states deleted", jobs=len(expired), partition=via.partition)
            effects += [
                Publish(via, tuple(tombstones[i : i + 1000]), {})
                for i in range(0, len(expired), 1000)
            ]
        return effects

    # -------------------------------------------------------------------- rebalance, shutdown

    def assign(self, tps: Iterable[TP], committed: Mapping[TP, int] | None = None) -> None:
        """Partitions now ours, with their committed offsets where known."""
        self.assigned |= set(tps)
        for tp, offset in (committed or {}).items():
            self.committed[tp] = max(offset, self.committed.get(tp, 0))
        self.expired_at = 0.0  # the next tick looks at the new partitions' ended jobs

    def revoke(self, tps: Iterable[TP], now: float) -> list[Effect]:
        """Start handing back the jobs of ``tps``: queued ones leave, running ones stop."""
        revoked = set(tps)
        self.releasing |= revoked
        return self._hand_back(lambda job: job.record in revoked, now)

    def release(self, tps: Iterable[TP]) -> list[Effect]:
        """The hand-back of ``tps`` is over (or out of time): forget their jobs and offsets.

        A run still going here is killed; it keeps its worker slot until its death is
        reported, nothing it says is published, and its job cannot run again before."""
        released = set(tps)
        effects: list[Effect] = []
        for job in [j for j in self.jobs.values() if j.record in released]:
            if job.state is State.QUEUED:
                self.queue.remove(job.job_id)
            self._leave(job)
            slot = self.runs.get(job.job_id)
            if slot is not None and slot.killed is None:
                slot.killed = Killed.HANDBACK
                effects.append(Kill(job.job_id, slot.attempt))
        self.offsets.forget(list(released))
        self.assigned -= released
        self.releasing -= released
        for tp in released:
            self.committed.pop(tp, None)
        self._unwrite(released)
        return effects

    def _unwrite(self, partitions: set[TP]) -> None:
        """Take the states of ``partitions``' jobs back to what the topic committed: their
        transactions still unsent were dropped (a fence, a flush out of time), and should
        the group give a partition back, a state this book wrote but never committed would
        settle the job's submit as a duplicate (the job never ends) or skip seqs."""
        for job_id in {*self.states, *self.read}:
            known = self.states.get(job_id) or self.read[job_id]
            if self._state_tp(known) not in partitions or job_id in self.jobs:
                continue
            committed = self.read.get(job_id)
            if committed is None:
                self.states.pop(job_id, None)
            else:
                self.states[job_id] = committed

    def shutdown(self, now: float) -> list[Effect]:
        """Stop dispatching; every running job checkpoints and stops (killed after grace)."""
        self.stopping = True
        return self._hand_back(lambda job: True, now)

    def _hand_back(self, chosen: Callable[[Job], bool], now: float) -> list[Effect]:
        effects: list[Effect] = []
        for job in [j for j in self.jobs.values() if chosen(j)]:
            if job.state is State.QUEUED:
                self.queue.remove(job.job_id)
                self._leave(job)
                continue
            if job.state is not State.RUNNING:
                continue  # already stopping (a cancelled job ends as cancelled)
            job.move(State.HANDING_BACK)
            job.kill_at = now + self.policy.handback_grace_s
            effects.append(Stop(job.job_id, StopReason.SHUTDOWN))
        return effects


def _admission_failed(exc: Exception) -> ModelTrainerError:
    """The typed refusal of a job whose admission raised something untyped (a bug, an OS
    error it did not expect): the job is refused and the service goes on."""
    log.error("admission raised", error=repr(exc)[:500])
    return ModelTrainerError(
        _C.INTERNAL_ERROR,
        f"the job could not be checked: {type(exc).__name__}: {exc}"[:1000],
        details={"exception": type(exc).__name__},
    )


def _with_cancel_reason(
    event: CompletedEventV1 | FailedEventV1, reason: str | None
) -> CompletedEventV1 | FailedEventV1:
    """A run stopped by a cancel reports where it stopped; its failed event also says why, as
    the cancel command's reason promises (a sweep names itself there when it prunes a trial)."""
    if not reason or not isinstance(event, FailedEventV1):
        return event
    if event.code is not _C.TRAINING_CANCELLED:
        return event
    message = f"cancelled: {reason} ({event.message})"
    details = {**event.details, "reason": reason}
    return event.model_copy(update={"message": message, "details": details})
