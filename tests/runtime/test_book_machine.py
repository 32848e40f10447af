"""The job book under random interleavings (hypothesis stateful testing).

A small world stands around the book: a commands log of two partitions, a publisher whose
transactions commit when flushed (a crash loses what was not), a compacted state topic, and
a pool of workers that progress, end, fail, die, obey or ignore stop requests, and report in
the order a real pool does. Rules submit (valid, duplicate, conflicting, on a wrong key),
cancel, deliver, advance the clock (stalls, deadlines, graces), revoke and assign partitions,
and crash the service (a new book replays the state topic; uncommitted commands come again).

After every step: at most one terminal event per job; each job's seqs are 0..n-1 with no
reuse; a job never runs twice at once; no partition's commit passes a submit whose job has
not ended; a transaction releases checkpoints for exactly the job whose end it carries, and
a sweep takes only jobs whose end is committed. At the end the world drains, and every
accepted job has exactly one terminal event.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from model_trainer.book.book import JobBook
from model_trainer.book.effects import Effect, Kill, Publish, Run, Stop, request_digest
from model_trainer.book.lifecycle import RUNS, State
from model_trainer.book.records import TP, Record
from model_trainer.core.sweep import ended_jobs
from model_trainer_contracts import (
    CancelJobV1,
    EventBase,
    FailedEventV1,
    JobStateV1,
    SubmitJobV1,
    decode_command,
    decode_event,
    encode,
)

from tests.figures import Figure
from tests.layers import examples

from .book_helpers import (
    TOPIC,
    WORKER_ACTS,
    Pool,
    completed,
    is_terminal,
    policy,
    records_of,
    refuse_bad,
    submit,
)

JOB_IDS = ["a", "b", "c", "bad-d"]
PARTITIONS = [TP(TOPIC, 0), TP(TOPIC, 1)]
SLOTS = 2
STATS: dict[str, int] = {"examples": 0, "steps": 0}
SEQUENCES: set[int] = set()


def home(job_id: str) -> TP:
    """The partition a record keyed by ``job_id`` lands on."""
    return PARTITIONS[sum(job_id.encode()) % len(PARTITIONS)]


@dataclass
class World:
    """Everything outside the book: topics, publisher, pool."""

    log: dict[TP, list[Record]] = field(default_factory=lambda: {tp: [] for tp in PARTITIONS})
    committed: dict[TP, int] = field(default_factory=lambda: {tp: 0 for tp in PARTITIONS})
    position: dict[TP, int] = field(default_factory=dict)  # assigned partitions only
    events: list[EventBase] = field(default_factory=list)  # committed
    state_topic: dict[str, JobStateV1] = field(default_factory=dict)
    pending: list[Publish] = field(default_factory=list)  # published, not yet committed
    pool: Pool = field(default_factory=lambda: Pool(SLOTS))
    revoking: set[TP] = field(default_factory=set)


@functools.lru_cache(maxsize=4096)
def _keyed_submit(key: bytes | None, value: bytes) -> tuple[str, str] | None:
    """A record's job id and request digest when it is a valid submit keyed by its job.

    Cached: the invariants ask it of every logged record after every step, and decoding
    them again each time was a quarter of this machine's run time."""
    command = decode_command(value)
    if not isinstance(command, SubmitJobV1) or key != command.job_id.encode():
        return None
    return command.job_id, request_digest(command)


class BookMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.now = 1000.0
        self.book = self._new_book()
        self.trace: list[str] = []
        STATS["examples"] += 1

    def _new_book(self) -> JobBook:
        book = JobBook(
            policy(
                slots=SLOTS,
                max_attempts=2,
                stall_timeout_s=100,
                handback_grace_s=10,
                state_every_s=30,  # state records lag a running job's events
            ),
            refuse_bad,
        )
        for state in self.world.state_topic.values():
            book.load(state)
        return book

    @initialize()
    def assign_all(self) -> None:
        self._assign(PARTITIONS)

    # -------------------------------------------------------------- the world's mechanics

    def _step(self, name: str) -> None:
        STATS["steps"] += 1
        self.trace.append(name)

    def _apply(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Publish):
                self.world.pending.append(effect)
            elif isinstance(effect, Run | Stop | Kill):
                self.world.pool.take(effect)
        self.world.pool.hand_out()

    def _deliver_inbox(self, most: int | None = None) -> None:
        """Hand the pool's messages to the book, oldest first (``most`` of them, or all)."""
        pool = self.world.pool
        for _ in itertools.count() if most is None else range(most):
            if not pool.inbox:
                return
            self._apply(pool.tell(self.book, pool.inbox.pop(0), self.now))

    def _flush(self) -> None:
        world = self.world
        for publish in world.pending:
            # Its checkpoints go once this commits: only with, and with every, job's end.
            ends = [e.job_id for e in publish.events if is_terminal(e)]
            assert ends == ([publish.ended] if publish.ended else []), "checkpoints misreleased"
            for out in records_of(publish):
                assert out.value is not None
                if out.topic == "events":
                    world.events.append(decode_event(out.value))
                elif out.topic == "state":
                    state = JobStateV1.model_validate_json(out.value)
                    world.state_topic[state.job_id] = state
            for tp, offset in publish.commits.items():
                assert offset >= world.committed[tp], "a commit went backwards"
                world.committed[tp] = offset
        world.pending.clear()

    def _assign(self, tps: list[TP]) -> None:
        for tp in tps:
            self.world.position[tp] = self.world.committed[tp]
        for state in self.world.state_topic.values():  # the state topic read to its end
            self.book.load(state)
        # the service reads the committed events since each running job's state record
        unsure = self.book.unsure(tps)
        seqs: dict[str, int] = {}
        for event in self.world.events:
            if event.job_id in unsure:
                seqs[event.job_id] = max(event.seq, seqs.get(event.job_id, -1))
        self.book.published(seqs)
        self.book.assign(tps)

    def _send(self, command: SubmitJobV1 | CancelJobV1, key: str) -> None:
        tp = home(key)
        log = self.world.log[tp]
        log.append(Record(tp.topic, tp.partition, len(log), key.encode(), encode(command), []))

    # -------------------------------------------------------------- rules: commands

    @rule(job_id=st.sampled_from(JOB_IDS), timeout=st.sampled_from([None, None, 30.0]))
    def submit(self, job_id: str, timeout: float | None) -> None:
        self._step("submit")
        self._send(submit(job_id, timeout_s=timeout), job_id)

    @rule(job_id=st.sampled_from(JOB_IDS))
    def submit_conflicting(self, job_id: str) -> None:
        self._step("conflict")
        self._send(submit(job_id, steps=777), job_id)

    @rule(job_id=st.sampled_from(JOB_IDS), key=st.sampled_from(["x", "y"]))
    def submit_on_wrong_key(self, job_id: str, key: str) -> None:
        self._step("wrong-key")
        self._send(submit(job_id), key)

    @rule(job_id=st.sampled_from(JOB_IDS))
    def cancel(self, job_id: str) -> None:
        self._step("cancel")
        self._send(CancelJobV1(job_id=job_id), job_id)

    @rule(tp=st.sampled_from(PARTITIONS), many=st.integers(1, 3))
    def deliver(self, tp: TP, many: int) -> None:
        self._step("deliver")
        world = self.world
        for _ in range(many):
            if tp not in world.position or tp in world.revoking:
                return
            at = world.position[tp]
            if at >= len(world.log[tp]):
                return
            world.position[tp] = at + 1
            self._apply(self.book.command(world.log[tp][at], self.now))

    # -------------------------------------------------------------- rules: workers

    @precondition(lambda self: bool(self.world.pool.runs))
    @rule(data=st.data(), what=st.sampled_from(WORKER_ACTS))
    def worker(self, data: st.DataObject, what: str) -> None:
        self._step(f"worker-{what}")
        pool = self.world.pool
        slot = data.draw(st.sampled_from(sorted(pool.runs)))
        pool.act(slot, what)

    @precondition(lambda self: bool(self.world.pool.runs) or bool(self.world.pool.inbox))
    @rule(steps=st.integers(1, 3))
    def train(self, steps: int) -> None:
        """Every running worker reports progress, and the book hears all the pool said (the
        common case, so that long runs are not left to a chain of single rules)."""
        self._step(f"train-{steps}")
        self._deliver_inbox()
        for run in list(self.world.pool.runs.values()):
            for _ in range(steps):
                self.world.pool.step(run)
        self._deliver_inbox()

    @precondition(lambda self: bool(self.world.pool.inbox))
    @rule(many=st.integers(1, 4))
    def pool_reports(self, many: int) -> None:
        self._step("report")
        self._deliver_inbox(many)

    @rule(seconds=st.sampled_from([0.5, 3.0, 11.0, 40.0, 120.0]))
    def tick(self, seconds: float) -> None:
        self._step(f"tick-{seconds:g}")
        self.now += seconds
        self._apply(self.book.tick(self.now))

    @rule()
    def flush(self) -> None:
        self._step("flush")
        self._flush()

    # -------------------------------------------------------------- rules: group, crash

    @precondition(lambda self: len(self.world.position) > len(self.world.revoking))
    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        self._step("revoke")
        tp = data.draw(st.sampled_from(sorted(set(self.world.position) - self.world.revoking)))
        self.world.revoking.add(tp)
        self._apply(self.book.revoke([tp], self.now))

    @precondition(lambda self: bool(self.world.revoking))
    @rule(data=st.data(), wait=st.booleans(), deaths_heard=st.booleans())
    def revoke_done(self, data: st.DataObject, wait: bool, deaths_heard: bool) -> None:
        """The rebalance callback returns: once all stopped, or after the grace (kills),
        with the killed workers' deaths reported in time or still on their way."""
        self._step("revoke-done")
        tp = data.draw(st.sampled_from(sorted(self.world.revoking)))
        self._deliver_inbox()
        if wait or self.book.handing_back([tp]):
            self.now += 11  # past the grace: the book kills what did not stop
            self._apply(self.book.tick(self.now))
            if deaths_heard:
                self._deliver_inbox()
        self._flush()
        self._apply(self.book.release([tp]))
        self.world.revoking.discard(tp)
        del self.world.position[tp]

    @precondition(lambda self: len(self.world.position) < len(PARTITIONS))
    @rule(data=st.data())
    def assign(self, data: st.DataObject) -> None:
        self._step("assign")
        free = sorted(set(PARTITIONS) - set(self.world.position) - self.world.revoking)
        if free:
            self._assign([data.draw(st.sampled_from(free))])

    @rule(flush_first=st.booleans())
    def crash(self, flush_first: bool) -> None:
        """kill -9 of the service: its workers stop, unflushed transactions are lost."""
        self._step("crash")
        world = self.world
        if flush_first:
            self._flush()
        world.pending.clear()
        world.pool.clear()
        world.revoking.clear()
        world.position.clear()
        self.book = self._new_book()
        self._assign(PARTITIONS)

    # -------------------------------------------------------------- invariants

    def _first_submits(self) -> dict[str, tuple[TP, int, str]]:
        """Each job's first valid, correctly keyed submit: where it is, its digest."""
        first: dict[str, tuple[TP, int, str]] = {}
        for tp, log in self.world.log.items():
            for rec in log:
                submit = _keyed_submit(rec.key, rec.value)
                if submit is None:
                    continue
                job_id, digest = submit
                if job_id not in first or (tp, rec.offset) < first[job_id][:2]:
                    first[job_id] = (tp, rec.offset, digest)
        return first

    @invariant()
    def at_most_one_terminal_event_per_job(self) -> None:
        ends: dict[str, int] = {}
        for event in self.world.events:
            if is_terminal(event):
                ends[event.job_id] = ends.get(event.job_id, 0) + 1
        assert all(n <= 1 for n in ends.values()), ends

    @invariant()
    def seq_per_job_counts_up_by_one(self) -> None:
        seqs: dict[str, list[int]] = {}
        for event in self.world.events:
            seqs.setdefault(event.job_id, []).append(event.seq)
        for job_id, numbers in seqs.items():
            assert numbers == list(range(len(numbers))), (job_id, numbers)

    @invariant()
    def commit_never_passes_an_unended_job(self) -> None:
        ended = {e.job_id for e in self.world.events if is_terminal(e)}
        for job_id, (tp, offset, _digest) in self._first_submits().items():
            if offset < self.world.committed[tp]:
                assert job_id in ended, f"{job_id}'s submit at {tp}/{offset} committed early"

    @invariant()
    def a_job_runs_at_most_once_at_a_time(self) -> None:
        running = [r.job_id for r in self.world.pool.runs.values()]
        assert len(running) == len(set(running)), running

    @invariant()
    def every_job_held_is_where_its_state_says(self) -> None:
        """The book holds live jobs only; queued ones are in the queue (and only they), and
        a running one's run holds a worker slot."""
        book = self.book
        for job in book.jobs.values():
            assert job.state in {State.QUEUED, *RUNS}, (job.job_id, job.state)
            assert (job.state is State.QUEUED) == (job.job_id in book.queue), job.job_id
            if job.state in RUNS:
                assert book.runs[job.job_id].attempt == job.attempt, job.job_id

    @invariant()
    def only_jobs_ended_for_good_are_swept(self) -> None:
        """The jobs whose checkpoints a sweep may delete, asked as the service asks (with
        nothing left uncommitted): their terminal event is committed and no run of theirs
        is going."""
        if self.world.pending:
            return
        swept = ended_jobs(self.book.states, self.book.jobs.keys() | self.book.runs.keys())
        assert swept <= {e.job_id for e in self.world.events if is_terminal(e)}, swept
        assert not swept & {r.job_id for r in self.world.pool.runs.values()}, swept

    def teardown(self) -> None:
        """Drain: every partition back, every command delivered, every run to its end."""
        SEQUENCES.add(hash(tuple(self.trace)))
        for tp in sorted(self.world.revoking):
            self.now += 11
            self._apply(self.book.tick(self.now))
            self._deliver_inbox()
            self._flush()
            self._apply(self.book.release([tp]))
            del self.world.position[tp]
        self.world.revoking.clear()
        self._assign(sorted(set(PARTITIONS) - set(self.world.position)))
        for _ in range(200):
            for tp in PARTITIONS:
                while self.world.position[tp] < len(self.world.log[tp]):
                    at = self.world.position[tp]
                    self.world.position[tp] = at + 1
                    self._apply(self.book.command(self.world.log[tp][at], self.now))
            pool = self.world.pool
            for slot in sorted(pool.runs):
                pool.finish(slot, "ended", completed(pool.runs[slot].job_id))
            self._deliver_inbox()
            self.now += 1
            self._apply(self.book.tick(self.now))
            self._flush()
            if not (pool.runs or pool.orders or pool.inbox or self.book.jobs):
                break
        ends: dict[str, int] = {}
        for event in self.world.events:
            if is_terminal(event):
                ends[event.job_id] = ends.get(event.job_id, 0) + 1
        accepted = set(self._first_submits())
        assert {j: ends.get(j, 0) for j in accepted} == dict.fromkeys(accepted, 1), self.trace
        for tp in PARTITIONS:
            assert self.world.committed[tp] == len(self.world.log[tp]), "commands left uncommitted"
        refusals = [e for e in self.world.events if isinstance(e, FailedEventV1)]
        assert all(e.job_id in JOB_IDS for e in refusals)


BookMachine.TestCase.settings = settings(
    max_examples=examples(2000),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_job_book_interleavings = BookMachine.TestCase


def test_report_how_many_interleavings_were_explored(figure: Figure) -> None:
    """Runs after the state machine (same module, declared later): prints its reach."""
    assert STATS["examples"] >= BookMachine.TestCase.settings.max_examples, STATS
    figure(
        f"job book: {STATS['examples']} examples, {STATS['steps']} steps, "
        f"{len(SEQUENCES)} distinct interleavings explored"
    )
