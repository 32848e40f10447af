"""Two job books over one world, under random interleavings (hypothesis stateful testing).

The world is what Kafka gives two instances of the service: a commands topic of three
partitions with the group's committed offset of each; one transactional producer per
partition and owner, with Kafka's epochs (the next owner's producer fences the last one:
its open transactions abort and every later one fails); a read_committed view of the events
topic, the compacted state topic and the dead letters, which only committed transactions
reach. Each instance has a book and a pool of workers.

Rules submit and cancel (valid, duplicate, conflicting, on the job's partition or another
one: a client's partitioner that disagrees), deliver commands (admission now and then
raising an OSError, a ValueError, a RuntimeError or a typed refusal), make workers
progress, end, fail and die, move the clock (stalls, graces, and past the state retention),
hand partitions over cleanly (revoke, flush or not, release) and not at all (the group
gives a partition to the other instance while its owner, paused, goes on consuming,
running and publishing until a transaction of its is refused), and crash an instance (now
and then while it handles a command: its crash marker refuses that command after the restart).

Checked over the committed output of both books, as each transaction commits: at most one
terminal event per job; each job's seqs are 0, 1, 2... in commit order; no run's progress is
committed once another run of the job has had some committed (a zombie never commits after
the owner took over); whatever speaks of a job, and every offset commit, is carried by its own
partition's producer; a commit never goes back. At the end the world drains, and every job
accepted ended exactly once.

A job's state tombstoned after the retention makes its ``job_id`` new again (README, state
retention): what is committed after the tombstone is counted as a new job.
"""

from __future__ import annotations

import os
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from model_trainer.book.book import Admit, JobBook
from model_trainer.book.effects import Effect, Kill, Publish, Run, Stop
from model_trainer.book.records import TP, Record
from model_trainer.shell.wire import Outgoing
from model_trainer_contracts import (
    CancelJobV1,
    EventBase,
    FailedEventV1,
    JobStateV1,
    ModelTrainerError,
    ModelTrainerErrorCode,
    ProgressEventV1,
    SubmitJobV1,
    encode,
)

from tests.figures import Figure
from tests.layers import examples

from .book_helpers import (
    WORKER_ACTS,
    Pool,
    completed,
    is_terminal,
    policy,
    records_of,
    refuse_bad,
    submit,
)

TOPIC = "jobs"
PARTITIONS = [TP(TOPIC, p) for p in range(3)]
JOB_IDS = ["a", "g", "b", "bad-c"]  # by crc32: partitions 0, 1, 2, 2
SLOTS = 2
NODES = 2
STATS: Counter[str] = Counter()
SEQUENCES: set[int] = set()
FAULTS: dict[str, Exception | None] = {
    "none": None,
    "os": OSError(36, "File name too long"),
    "value": ValueError("embedded null byte"),
    "runtime": RuntimeError("a bug in admission"),
    "typed": ModelTrainerError(ModelTrainerErrorCode.INVALID_MODEL_SIZE, "too big"),
}
_STATES: dict[bytes, JobStateV1] = {}  # decoded state records, by their bytes (speed)
_COMMANDS: dict[tuple[str, str, int], bytes] = {}


T = TypeVar("T")
PICK = st.integers(0, 5)  # which of the pairs a rule may act on (cheaper than a data draw)


def chosen(options: list[T], pick: int) -> T:
    return options[pick % len(options)]


def partitioner(key: bytes, count: int) -> int:
    """The service's partitioner in this world (any deterministic one will do)."""
    return zlib.crc32(key) % count


def command_bytes(kind: str, job_id: str, steps: int = 10) -> bytes:
    if (kind, job_id, steps) not in _COMMANDS:
        command = submit(job_id, steps=steps) if kind == "submit" else CancelJobV1(job_id=job_id)
        _COMMANDS[kind, job_id, steps] = encode(command)
    return _COMMANDS[kind, job_id, steps]


def state_of(value: bytes) -> JobStateV1:
    if value not in _STATES:
        _STATES[value] = JobStateV1.model_validate_json(value)
    return _STATES[value]


def admission(fault: Exception | None) -> Admit:
    def admit(spec: SubmitJobV1) -> None:
        refuse_bad(spec)
        if fault is not None:
            raise fault

    return admit


@dataclass
class Node:
    """One instance of the service: its book, producers, consumer positions and workers."""

    name: int
    incarnation: int
    book: JobBook
    pool: Pool = field(default_factory=lambda: Pool(SLOTS))
    producers: dict[TP, int] = field(default_factory=dict)  # the epoch each was opened at
    position: dict[TP, int] = field(default_factory=dict)  # partitions it consumes
    revoking: set[TP] = field(default_factory=set)
    pending: list[Publish] = field(default_factory=list)  # sent, not yet committed
    read_at: int = 0  # how much of the state topic its book has read
    suspects: set[tuple[int, int]] = field(default_factory=set)  # crash markers found


@dataclass
class World:
    """Kafka as both instances see it: only what committed."""

    log: dict[TP, list[Record]] = field(default_factory=lambda: {tp: [] for tp in PARTITIONS})
    committed: dict[TP, int] = field(default_factory=lambda: dict.fromkeys(PARTITIONS, 0))
    epoch: dict[TP, int] = field(default_factory=lambda: dict.fromkeys(PARTITIONS, 0))
    owner: dict[TP, int | None] = field(default_factory=lambda: dict.fromkeys(PARTITIONS))
    state_log: list[tuple[str, JobStateV1 | None]] = field(default_factory=list)  # None: deleted
    life: Counter[str] = field(default_factory=Counter)  # tombstones committed, by job_id
    seqs: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    terminals: Counter[tuple[str, int]] = field(default_factory=Counter)
    accepted: set[tuple[str, int]] = field(default_factory=set)
    runs: dict[tuple[str, int], list[tuple[int, int, int]]] = field(default_factory=dict)
    dead_letters: list[Outgoing] = field(default_factory=list)


class WorldMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.now = 1000.0
        self.incarnations = 0
        self.nodes = [self._start(n) for n in range(NODES)]
        self.trace: list[str] = []
        self.sent: set[tuple[str, str]] = set()
        self.crashed_on: set[str] = set()  # jobs whose command a crash marker refused
        STATS["examples"] += 1

    # -------------------------------------------------------------- instances

    def _start(self, name: int) -> Node:
        self.incarnations += 1
        book = JobBook(
            policy(
                slots=SLOTS,
                max_attempts=2,
                stall_timeout_s=100,
                handback_grace_s=10,
                state_every_s=30,  # state records lag a running job's events
                max_progress_per_s=1.0,  # progress within a second is held
                state_retention_s=300,
            ),
            refuse_bad,
            partitioner=partitioner,
            partition_count=len(PARTITIONS),
        )
        node = Node(name, self.incarnations, book)
        self._catch_up(node)
        return node

    def _catch_up(self, node: Node) -> None:
        """The state topic read on to its end (from its start by a new book)."""
        for job_id, state in self.world.state_log[node.read_at :]:
            if state is None:
                node.book.forget(job_id)
            else:
                node.book.load(state)
        node.read_at = len(self.world.state_log)

    def _adopt(self, node: Node, tps: list[TP]) -> None:
        """As the service takes up partitions: open their producers (fencing the last
        owner), read the state topic and the events of jobs it may lag, then consume from
        the committed offsets."""
        world = self.world
        for tp in tps:
            assert tp not in node.position, f"{tp} adopted twice"
            world.epoch[tp] += 1
            world.owner[tp] = node.name
            node.producers[tp] = world.epoch[tp]
            node.position[tp] = world.committed[tp]
        self._catch_up(node)
        last: dict[str, int] = {}
        for job_id in node.book.unsure(tps):
            seqs = world.seqs.get((job_id, world.life[job_id]), [])
            if seqs:
                last[job_id] = seqs[-1]
        node.book.published(last)
        node.book.assign(tps, {tp: world.committed[tp] for tp in tps})

    def _apply(self, node: Node, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Publish):
                node.pending.append(effect)
            elif isinstance(effect, Run | Stop | Kill):
                node.pool.take(effect)
        node.pool.hand_out()

    def _tell(self, node: Node, most: int | None = None) -> None:
        """Hand the pool's messages to the book, oldest first (``most`` of them, or all)."""
        told = 0
        while node.pool.inbox and (most is None or told < most):
            told += 1
            self._apply(node, node.pool.tell(node.book, node.pool.inbox.pop(0), self.now))

    def _release(self, node: Node, tp: TP) -> None:
        """The partition's jobs dropped, its producer closed with what it had not sent."""
        self._apply(node, node.book.release([tp]))
        node.pending = [p for p in node.pending if p.via != tp]
        node.producers.pop(tp, None)
        node.position.pop(tp, None)
        node.revoking.discard(tp)
        if self.world.owner[tp] == node.name:
            self.world.owner[tp] = None

    def _flush(self, node: Node, tp: TP | None = None) -> None:
        """Commit the node's transactions (of ``tp``, or all), each in order; one its
        producer can no longer commit is refused, and the service gives the partition up."""
        keep: list[Publish] = []
        fenced: list[TP] = []
        for publish in node.pending:
            if tp is not None and publish.via != tp:
                keep.append(publish)
            elif publish.via in fenced:
                continue
            elif node.producers.get(publish.via) == self.world.epoch[publish.via]:
                self._commit(node, publish)
            else:
                STATS["fencings"] += 1
                fenced.append(publish.via)
        node.pending = keep
        for lost in fenced:
            self._release(node, lost)
        self._catch_up(node)

    def _commit(self, node: Node, publish: Publish) -> None:
        world = self.world
        assert set(publish.commits) <= {publish.via}, "an offset committed by another producer"
        events = iter(publish.events)
        for out in records_of(publish):
            if out.topic in ("events", "state"):
                # Only the job's partition's producer may speak of it: any other could be one
                # its stale owner still holds, unfenced.
                home = partitioner(out.key, len(PARTITIONS))
                assert publish.via.partition == home, f"{out.key!r} said via {publish.via}"
            if out.topic == "events":
                self._event(node, next(events))
            elif out.topic == "state":
                job_id = out.key.decode()
                if out.value is None:
                    world.state_log.append((job_id, None))
                    world.life[job_id] += 1  # its job_id is new again
                else:
                    world.state_log.append((job_id, state_of(out.value)))
            elif out.topic == TOPIC:
                assert out.partition is not None, "a forwarded command without its partition"
                log = world.log[TP(TOPIC, out.partition)]
                value, headers = out.value or b"", list(out.headers)
                log.append(Record(TOPIC, out.partition, len(log), out.key, value, headers))
                STATS["forwarded"] += 1
            else:
                world.dead_letters.append(out)
        assert next(events, None) is None, "an event without its record"
        for tp, offset in publish.commits.items():
            assert offset >= world.committed[tp], f"the commit of {tp} went back"
            world.committed[tp] = offset

    def _event(self, node: Node, event: EventBase) -> None:
        world = self.world
        job = (event.job_id, world.life[event.job_id])
        seqs = world.seqs.setdefault(job, [])
        assert event.seq == len(seqs), f"{job}: seq {event.seq} after {seqs}"
        seqs.append(event.seq)
        rejected = isinstance(event, FailedEventV1) and event.details.get("command_rejected")
        if rejected is not True:
            world.accepted.add(job)
        if is_terminal(event):
            world.terminals[job] += 1
            assert world.terminals[job] == 1, f"{job} ended twice"
        if isinstance(event, ProgressEventV1):
            run = (node.name, node.incarnation, event.attempt)
            runs = world.runs.setdefault(job, [])
            if not runs or runs[-1] != run:
                assert run not in runs, f"{job}: run {run} committed again after {runs}"
                assert not runs or runs[-1][2] <= run[2], f"{job}: attempts went back {runs}"
                runs.append(run)

    def _step(self, name: str) -> None:
        STATS["steps"] += 1
        self.trace.append(name)

    @initialize(split=st.booleans())
    def start(self, split: bool) -> None:
        self._adopt(self.nodes[0], PARTITIONS[:1] if split else PARTITIONS)
        if split:
            self._adopt(self.nodes[1], PARTITIONS[1:])

    # -------------------------------------------------------------- rules: clients

    @rule(
        job_id=st.sampled_from(JOB_IDS),
        kind=st.sampled_from(["submit", "submit", "cancel", "conflict"]),
        elsewhere=st.sampled_from([0, 0, 0, 1, 2]),
    )
    def send(self, job_id: str, kind: str, elsewhere: int) -> None:
        """A client produces a command, keyed by its job_id, to the job's partition or (a
        client whose partitioner disagrees) ``elsewhere`` partitions further on."""
        self._step(f"{kind}{'-misplaced' if elsewhere else ''}")
        value = (
            command_bytes("submit", job_id, 777)
            if kind == "conflict"
            else command_bytes(kind, job_id)
        )
        partition = (partitioner(job_id.encode(), len(PARTITIONS)) + elsewhere) % len(PARTITIONS)
        self.sent.add((kind, job_id))
        log = self.world.log[PARTITIONS[partition]]
        log.append(Record(TOPIC, partition, len(log), job_id.encode(), value, []))

    def _unread(self) -> list[tuple[int, TP]]:
        """(node, partition) pairs with commands the node would consume now."""
        return [
            (node.name, tp)
            for node in self.nodes
            for tp, at in sorted(node.position.items())
            if tp not in node.revoking and at < len(self.world.log[tp])
        ]

    @precondition(lambda self: bool(self._unread()))
    @rule(
        pick=PICK,
        many=st.integers(1, 3),
        fault=st.sampled_from(["none", "none", "none", "os", "value", "runtime", "typed"]),
    )
    def deliver(self, pick: int, many: int, fault: str) -> None:
        """A node consumes commands of a partition it holds (stale or not); its admission
        may raise anything."""
        n, tp = chosen(self._unread(), pick)
        node = self.nodes[n]
        self._step(f"deliver-{fault}")
        admit = admission(FAULTS[fault])
        for _ in range(many):
            if node.position[tp] >= len(self.world.log[tp]):
                return
            self._consume(node, tp, admit)

    def _consume(self, node: Node, tp: TP, admit: Admit = refuse_bad) -> None:
        """The node handles its next command of ``tp``; one it crashed on is refused."""
        at = node.position[tp]
        node.position[tp] = at + 1
        record = self.world.log[tp][at]
        if (tp.partition, at) in node.suspects:
            STATS["crash markers"] += 1
            self.crashed_on.add((record.key or b"").decode())
            crashed = ModelTrainerError(ModelTrainerErrorCode.COMMAND_CRASHED, "crashed on it")
            self._apply(node, node.book.refuse(record, crashed, self.now))
        else:
            self._apply(node, node.book.command(record, self.now, admit=admit))

    # -------------------------------------------------------------- rules: workers

    @precondition(lambda self: any(node.pool.runs for node in self.nodes))
    @rule(pick=PICK, what=st.sampled_from(WORKER_ACTS))
    def worker(self, pick: int, what: str) -> None:
        busy = [(node.name, slot) for node in self.nodes for slot in sorted(node.pool.runs)]
        n, slot = chosen(busy, pick)
        pool = self.nodes[n].pool
        self._step(f"worker-{what}")
        pool.act(slot, what)

    @precondition(lambda self: any(node.pool.runs or node.pool.inbox for node in self.nodes))
    @rule(n=st.integers(0, NODES - 1), steps=st.integers(1, 3))
    def train(self, n: int, steps: int) -> None:
        """Every running worker of the node reports progress, and its book hears it all."""
        node = self.nodes[n]
        self._step(f"train-{steps}")
        self._tell(node)
        for run in list(node.pool.runs.values()):
            for _ in range(steps):
                node.pool.step(run)
        self._tell(node)

    @precondition(lambda self: any(node.pool.inbox for node in self.nodes))
    @rule(n=st.integers(0, NODES - 1), many=st.integers(1, 4))
    def pool_reports(self, n: int, many: int) -> None:
        self._step("report")
        self._tell(self.nodes[n], many)

    @rule(
        seconds=st.sampled_from([0.5, 3.0, 11.0, 40.0, 120.0, 400.0]),
        who=st.sampled_from(["both", "both", "0", "1"]),
    )
    def tick(self, seconds: float, who: str) -> None:
        """Time passes; a paused instance's book does not see it."""
        self._step(f"tick-{seconds:g}-{who}")
        self.now += seconds
        for node in self.nodes:
            if who in ("both", str(node.name)):
                self._apply(node, node.book.tick(self.now))

    @precondition(lambda self: any(node.pending for node in self.nodes))
    @rule(n=st.integers(0, NODES - 1), tp=st.sampled_from([None, None, *PARTITIONS]))
    def flush(self, n: int, tp: TP | None) -> None:
        self._step("flush")
        self._flush(self.nodes[n], tp)

    # -------------------------------------------------------------- rules: the group

    def _held(self) -> list[tuple[int, TP]]:
        return [
            (node.name, tp)
            for node in self.nodes
            for tp in sorted(node.position)
            if tp not in node.revoking
        ]

    @precondition(lambda self: bool(self._held()))
    @rule(pick=PICK)
    def revoke(self, pick: int) -> None:
        """The group takes a partition a node holds (its own, or one it lost unaware)."""
        n, tp = chosen(self._held(), pick)
        node = self.nodes[n]
        self._step("revoke")
        node.revoking.add(tp)
        self._apply(node, node.book.revoke([tp], self.now))

    @precondition(lambda self: any(node.revoking for node in self.nodes))
    @rule(
        pick=PICK,
        wait=st.booleans(),
        flushed=st.sampled_from([True, True, False]),
        to=st.sampled_from([None, 0, 1]),
    )
    def revoke_done(self, pick: int, wait: bool, flushed: bool, to: int | None) -> None:
        """The hand-back ends: once all stopped or past the grace (kills), its transactions
        flushed or dropped (the flush timed out); the partition goes to ``to``, if free."""
        revoking = [(node.name, tp) for node in self.nodes for tp in sorted(node.revoking)]
        n, tp = chosen(revoking, pick)
        node = self.nodes[n]
        self._step(f"revoke-done-{'flushed' if flushed else 'dropped'}")
        self._tell(node)
        if wait or node.book.handing_back([tp]):
            self.now += 11  # past the grace: the book kills what did not stop
            self._apply(node, node.book.tick(self.now))
            self._tell(node)
        if flushed:
            self._flush(node, tp)
        self._release(node, tp)
        taker = None if to is None else self.nodes[to]
        if taker is not None and self.world.owner[tp] is None and tp not in taker.position:
            self._adopt(taker, [tp])

    def _free(self) -> list[tuple[int, TP]]:
        return [
            (node.name, tp)
            for node in self.nodes
            for tp in PARTITIONS
            if self.world.owner[tp] is None and tp not in node.position
        ]

    @precondition(lambda self: bool(self._free()))
    @rule(pick=PICK)
    def assign(self, pick: int) -> None:
        n, tp = chosen(self._free(), pick)
        self._step("assign")
        self._adopt(self.nodes[n], [tp])

    def _takeable(self) -> list[TP]:
        return [
            tp
            for tp, owner in self.world.owner.items()
            if owner is not None and tp not in self.nodes[1 - owner].position
        ]

    @precondition(lambda self: bool(self._takeable()))
    @rule(pick=PICK)
    def take_over(self, pick: int) -> None:
        """The owner of a partition is paused past the session timeout: the group gives it
        to the other instance, which never hears of a hand-back. The old owner, unaware,
        goes on until a transaction of its is refused (or the group tells it, later)."""
        tp = chosen(self._takeable(), pick)
        owner = self.world.owner[tp]
        assert owner is not None
        self._step("take-over")
        STATS["takeovers"] += 1
        self._adopt(self.nodes[1 - owner], [tp])

    @rule(n=st.integers(0, NODES - 1), flush_first=st.booleans(), handling=st.booleans())
    def crash(self, n: int, flush_first: bool, handling: bool) -> None:
        """kill -9 of an instance (``handling`` its next command: the marker left behind
        refuses that command when it comes again): its workers die with it, what it had
        not committed is lost, and it starts again with the partitions the group still
        gives it."""
        self._step("crash")
        node = self.nodes[n]
        if flush_first:
            self._flush(node)
        owned = [tp for tp in PARTITIONS if self.world.owner[tp] == node.name]
        fresh = self._start(node.name)
        fresh.suspects = set(node.suspects)
        unread = [(tp.partition, node.position[tp]) for m, tp in self._unread() if m == n]
        if handling and unread:
            fresh.suspects.add(unread[0])
        self.nodes[n] = fresh
        if owned:
            self._adopt(fresh, owned)

    # -------------------------------------------------------------- the end

    def teardown(self) -> None:
        """Drain: stale holdings given up, every partition owned, every command delivered,
        every run to its end; then every accepted job ended exactly once."""
        SEQUENCES.add(hash(tuple(self.trace)))
        world = self.world
        for node in self.nodes:
            for tp in sorted(node.position):
                if world.owner[tp] != node.name:  # woken up: the group says it is gone
                    self._apply(node, node.book.revoke([tp], self.now))
                    self._flush(node, tp)
                    if tp in node.position:
                        self._release(node, tp)
            for tp in sorted(node.revoking):
                self.now += 11
                self._apply(node, node.book.tick(self.now))
                self._tell(node)
                self._flush(node, tp)
                self._release(node, tp)
        for tp in PARTITIONS:
            if world.owner[tp] is None:
                self._adopt(self.nodes[0], [tp])
        for _ in range(200):
            for node in self.nodes:
                for tp in sorted(node.position):
                    while node.position[tp] < len(world.log[tp]):
                        self._consume(node, tp)
                for slot in sorted(node.pool.runs):
                    node.pool.finish(slot, "ended", completed(node.pool.runs[slot].job_id))
                self._tell(node)
                self._apply(node, node.book.tick(self.now))
                self._flush(node)
            self.now += 1
            busy = any(
                n.pool.runs or n.pool.orders or n.pool.inbox or n.book.jobs or n.pending
                for n in self.nodes
            )
            if not busy and all(world.committed[tp] == len(world.log[tp]) for tp in PARTITIONS):
                break
        ended = {job: world.terminals[job] for job in world.accepted}
        assert ended == dict.fromkeys(world.accepted, 1), (ended, self.trace)
        for tp in PARTITIONS:
            assert world.committed[tp] == len(world.log[tp]), ("left uncommitted", tp, self.trace)
        submitted = {job_id for kind, job_id in self.sent if kind != "cancel"}
        submitted -= self.crashed_on  # its one submit may be the one refused
        lives = {job_id for job_id, _ in world.accepted}
        assert submitted <= lives, ("a submitted job never ran", submitted - lives, self.trace)


WorldMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("BOOK_WORLD_EXAMPLES", examples(2000))),
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_two_books_over_one_world = WorldMachine.TestCase


def test_report_how_many_interleavings_and_fencings_were_explored(figure: Figure) -> None:
    """Runs after the state machine (same module, declared later): prints its reach."""
    assert STATS["examples"] >= WorldMachine.TestCase.settings.max_examples, STATS
    assert STATS["fencings"] > 0, STATS
    assert STATS["takeovers"] > 0, STATS
    figure(
        f"two books, one world: {STATS['examples']} examples, {STATS['steps']} steps, "
        f"{len(SEQUENCES)} distinct interleavings explored, {STATS['takeovers']} take-overs "
        f"of a live owner, {STATS['fencings']} transactions refused by a fence, "
        f"{STATS['forwarded']} commands forwarded, {STATS['crash markers']} refused by a "
        "crash marker"
    )
